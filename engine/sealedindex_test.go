package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/internal/testutil"
)

// heapObjects is the Go heap in use by live objects, after collections:
// two, since what sync.Pools hold survives one.
func heapObjects() int64 {
	runtime.GC()
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return int64(s[0].Value.Uint64())
}

// TestHeapDoesNotGrowWithSealedSegments: the memory a log holds after every
// record of its sealed segments was read once (each segment's file opened
// and its footer loaded) grows with the number of segments by a small
// constant per segment (its descriptor, its open file, its footer's
// summary: about 1 KiB in a heap profile; 0.9 to 4 KiB measured here,
// with what the cache's maps keep of having held more keys), not by its
// index: logs of 4 and of 64 sealed segments of 1 MiB (an index entry per
// 512 bytes: about 2,000 entries, 80 KiB in memory, each), on disk, opened
// after a clean close and read in order, under a cache full in both.
func TestHeapDoesNotGrowWithSealedSegments(t *testing.T) {
	const perSegment = 8 << 10 // bytes of heap per sealed segment, at most
	grown := map[int]int64{}
	var entries int
	for _, n := range []int{4, 64} {
		dir := t.TempDir()
		o := DefaultOptions()
		// A cache that is full either way; the close syncs.
		o.SegmentSize, o.MaxWrite, o.IndexInterval, o.CacheBytes, o.Logger = 1<<20, 128<<10, 512, 1<<20, quiet
		o.SyncMode = SyncNever
		l, err := Open(dir, o)
		require.NoError(t, err)
		for len(l.Segments()) < n {
			recs := make([][]byte, 100)
			for i := range recs {
				recs[i] = offRecord(l.EndOffset()+uint64(i), 500)
			}
			_, err := l.Append(recs...)
			require.NoError(t, err)
		}
		require.NoError(t, l.Roll())
		end := l.EndOffset()
		require.NoError(t, l.Close())

		before := heapObjects()
		l, err = Open(dir, o)
		require.NoError(t, err)
		requireOffRecords(t, l, 0, end, 500)
		l.ra.wg.Wait()
		l.cache.Wait()
		after := heapObjects()
		segs := *l.segs.Load()
		for _, s := range segs[:len(segs)-1] {
			require.True(t, s.loaded.Load(), "segment %d was read", s.base)
			require.Nil(t, s.index, "segment %d keeps no index entries in memory", s.base)
			require.NotNil(t, s.sum.Load(), "segment %d keeps its footer's summary", s.base)
			entries = max(entries, s.sum.Load().Entries)
		}
		grown[n] = after - before
		t.Logf("%d sealed segments: the open log holds %d KiB of heap", len(segs)-1, grown[n]>>10)
		runtime.KeepAlive(l)
		require.NoError(t, l.Close())
	}
	per := (grown[64] - grown[4]) / 60
	index := int64(entries) * int64(unsafe.Sizeof(indexEntry{}))
	t.Logf("%d bytes of heap per sealed segment; its index (%d entries) would be %d bytes", per, entries, index)
	assert.Less(t, per, int64(perSegment), "heap per sealed segment")
	assert.Less(t, 8*per, index, "heap per sealed segment, against its index")
}

// TestFlippedIndexBlockByte: one bit flipped in any byte of any index
// block of a sealed segment's footer (every byte with SEGSTORE_LONG=1; the
// first 64 and every 61st otherwise) never makes a point read return wrong
// bytes. Flipped under an open log whose segment is loaded, a cold read of
// an offset the block indexes reports corruption naming the segment and
// the block's position; flipped before a read-only open, the footer is
// found damaged when the segment loads and every read is served from an
// index rebuilt from the records (every eighth flip of the sweep; all of
// them with SEGSTORE_LONG=1).
func TestFlippedIndexBlockByte(t *testing.T) {
	dir := t.TempDir()
	d, err := blockdev.OpenDir(dir, false)
	require.NoError(t, err)
	cd := &countingDir{Dir: d}
	o := DefaultOptions()
	o.Dir = cd
	o.SegmentSize, o.MaxWrite, o.IndexInterval, o.CacheBytes, o.Logger = 256<<10, 32<<10, 512, 1<<20, quiet
	l, err := Open(dir, o)
	require.NoError(t, err)
	for len(l.Segments()) < 3 {
		recs := make([][]byte, 4)
		for i := range recs {
			recs[i] = offRecord(l.EndOffset()+uint64(i), 300)
		}
		_, err := l.Append(recs...)
		require.NoError(t, err)
	}
	require.NoError(t, l.Close())
	l, err = Open(dir, o)
	require.NoError(t, err)
	defer func() { require.NoError(t, l.Close()) }()

	type block struct {
		seg  *segment
		pos  int64
		offs []uint64 // offsets it indexes: its first, one inside, its last
	}
	var blocks []block
	segs := *l.segs.Load()
	for _, s := range segs[:len(segs)-1] {
		_, err := l.Read(s.base, nil) // loads it
		require.NoError(t, err)
		sum := s.sum.Load()
		require.NotNil(t, sum)
		require.Greater(t, len(sum.First), 1, "the sweep needs segments of several index blocks")
		for k, f := range sum.First {
			last := s.vis().off - 1
			if k+1 < len(sum.First) {
				last = sum.First[k+1].Off - 1
			}
			blocks = append(blocks, block{seg: s, pos: sum.BlocksAt + int64(k*indexBlockLen), offs: []uint64{f.Off, (f.Off + last) / 2, last}})
		}
	}
	var bytesAt []int
	for p := range indexBlockLen {
		if testutil.Long() || p < 64 || p%61 == 0 || p == indexBlockLen-1 {
			bytesAt = append(bytesAt, p)
		}
	}
	flip := func(s *segment, at int64) {
		f, err := os.OpenFile(filepath.Join(dir, s.name), os.O_RDWR, 0)
		require.NoError(t, err)
		defer f.Close()
		b := make([]byte, 1)
		_, err = f.ReadAt(b, at)
		require.NoError(t, err)
		b[0] ^= 1 << (at % 8)
		_, err = f.WriteAt(b, at)
		require.NoError(t, err)
	}
	wantRecords := func(l *Log, offs []uint64, what string) {
		for _, off := range offs {
			got, err := l.Read(off, nil)
			require.NoError(t, err, what)
			require.NoError(t, checkOffRecord(off, got, 300), what)
		}
	}
	for _, b := range blocks {
		for _, p := range bytesAt {
			what := fmt.Sprintf("segment %d, index block at %d, byte %d flipped", b.seg.base, b.pos, p)
			flip(b.seg, b.pos+int64(p))
			for _, off := range b.offs {
				rec, _, err := coldRead(t, l, cd, off)
				var ce *CorruptionError
				require.True(t, errors.As(err, &ce), "%s: offset %d read %d bytes, error %v", what, off, len(rec), err)
				assert.Equal(t, [2]int64{int64(b.seg.base), b.pos}, [2]int64{int64(ce.Segment), ce.Position}, "%s: %v", what, err)
			}
			flip(b.seg, b.pos+int64(p)) // back
			rec, _, err := coldRead(t, l, cd, b.offs[1])
			require.NoError(t, err, what)
			require.NoError(t, checkOffRecord(b.offs[1], rec, 300), what)
		}
	}
	// Before an open: the segment's first use finds its footer damaged.
	for _, b := range blocks {
		for i, p := range bytesAt {
			if !testutil.Long() && i%8 != 0 { // an open per flip: every eighth byte of the sweep
				continue
			}
			what := fmt.Sprintf("reopened, segment %d, index block at %d, byte %d flipped", b.seg.base, b.pos, p)
			flip(b.seg, b.pos+int64(p))
			ro := o
			ro.ReadOnly = true
			r, err := Open(dir, ro)
			require.NoError(t, err, what)
			wantRecords(r, b.offs, what)
			require.NoError(t, r.Close())
			flip(b.seg, b.pos+int64(p))
		}
	}
}

// TestIndexBlockFind: a block's find returns, for every offset, the last
// entry at or before it (the first if none is) and where that entry's
// records end, as a linear search does, whatever the spacing of the
// entries' offsets (its first guess assumes even steps).
func TestIndexBlockFind(t *testing.T) {
	even := func(n int, step uint64) []uint64 {
		offs := make([]uint64, n)
		for i := range offs {
			offs[i] = 5 + uint64(i)*step
		}
		return offs
	}
	skewed := func(n int) []uint64 { // steps growing quadratically
		offs := make([]uint64, n)
		for i := range offs {
			offs[i] = uint64(i * i * 3)
		}
		return offs
	}
	cases := map[string][]uint64{
		"one":               {7},
		"two":               {0, 9},
		"even, full":        even(entriesPerBlock, 4),
		"even, steps of 1":  even(entriesPerBlock, 1),
		"even, partial":     even(40, 13),
		"skewed":            skewed(entriesPerBlock),
		"one far gap":       append(even(100, 4), 1<<14, 1<<14+1),
		"dense then sparse": append(even(60, 1), even(60, 500)[1:]...),
		// Equal offsets never pass a block's check; find still resolves
		// them to the last, as its binary search does.
		"duplicates":       {3, 3, 3, 9, 9, 20, 20},
		"all one offset":   {4, 4, 4},
		"two of one":       {0, 0},
		"the 32-bit limit": {0, 1, 1 << 31, 1<<32 - 2, 1<<32 - 1},
	}
	const base, next = 1000, 1 << 40
	for name, offs := range cases {
		t.Run(name, func(t *testing.T) {
			b := make(indexBlock, indexBlockLen)
			binary.LittleEndian.PutUint32(b[4:], uint32(len(offs)))
			binary.LittleEndian.PutUint64(b[16:], next)
			for i, o := range offs {
				layout.EncodeEntry(b[indexBlockHead+i*indexEntryLen:], base, layout.IndexEntry{Pos: int64(100 * (i + 1)), Off: base + o})
			}
			var rels []uint64 // every offset up to a few past the last, or a few around each entry's
			for rel := uint64(0); rel <= offs[len(offs)-1]+3 && rel < 1<<16; rel++ {
				rels = append(rels, rel)
			}
			if offs[len(offs)-1] >= 1<<16 {
				for _, o := range offs {
					for d := uint64(0); d <= 6; d++ {
						if o+d >= 3 {
							rels = append(rels, o+d-3)
						}
					}
				}
			}
			for _, rel := range rels {
				j := 0
				for i, o := range offs {
					if o <= rel {
						j = i
					}
				}
				end := int64(next)
				if j+1 < len(offs) {
					end = int64(100 * (j + 2))
				}
				e, gotEnd := b.find(base, base+rel)
				require.Equal(t, base+offs[j], e.off, "offset %d", base+rel)
				require.Equal(t, end, gotEnd, "offset %d", base+rel)
			}
		})
	}
}
