package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/internal/testutil"
)

// indexRunsLog is a log of four segments of 2 MiB (29 index blocks each
// at a 512 B interval, records of about 300 B), reopened so that its
// sealed segments keep only their footer's summary.
func indexRunsLog(t *testing.T, dir string, o Options) *Log {
	t.Helper()
	o.SegmentSize, o.MaxWrite, o.IndexInterval, o.SyncMode = 2<<20, 256<<10, 512, SyncNever
	l, err := Open(dir, o)
	require.NoError(t, err)
	for len(l.Segments()) < 4 {
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
	for _, s := range (*l.segs.Load())[:len(l.Segments())-1] {
		require.NoError(t, l.ensure(s))
		require.NotNil(t, s.sum.Load(), "segment %d keeps only its summary", s.base)
	}
	return l
}

// forgetIndex makes every index block of l cold: new namespaces, no run.
func forgetIndex(l *Log) {
	l.ra.wg.Wait()
	for _, s := range *l.segs.Load() {
		s.ns = l.cache.NewNamespace()
	}
	l.tail.Store(nil)
	l.indexRuns.drop()
}

// TestIndexRunsEveryDamagedBlock: a byte flipped in any block of a run
// (the first, the second, the last of a run, the first and second of the
// next run, the segment's last two blocks) or the file cut inside a run:
// a sequential scan of the segment returns each record right or a
// CorruptionError at that block, and afterwards every index block the
// cache holds for the segment, and every block a kept run holds, is the
// file's block as written (never the damaged one), and a cold point read
// through the damaged block reports it.
func TestIndexRunsEveryDamagedBlock(t *testing.T) {
	dir := t.TempDir()
	od, err := blockdev.OpenDir(dir, false)
	require.NoError(t, err)
	d := &countingDir{Dir: od}
	o := testOptions(d)
	o.CacheBytes = 64 << 20
	l := indexRunsLog(t, dir, o)
	defer func() { require.NoError(t, l.Close()) }()
	s := (*l.segs.Load())[1]
	sum := s.sum.Load()
	nb := len(sum.First)
	require.Greater(t, nb, raIndexBlocks+4)
	file := filepath.Join(dir, s.name)
	orig, err := os.ReadFile(file)
	require.NoError(t, err)
	blockAt := func(k int) int64 { return sum.BlocksAt + int64(k*indexBlockLen) }

	check := func(t *testing.T, bad int, badAt int64) {
		forgetIndex(l)
		for off := s.base; off < s.vis().off; off++ {
			got, err := l.Read(off, nil)
			var ce *CorruptionError
			if errors.As(err, &ce) {
				require.Equal(t, badAt, ce.Position, "offset %d: %v", off, err)
				continue
			}
			require.NoError(t, err, "offset %d", off)
			require.NoError(t, checkOffRecord(off, got, 300), "offset %d", off)
		}
		l.ra.wg.Wait()
		l.cache.Wait()
		good := func(k int, b []byte) {
			require.Len(t, b, indexBlockLen)
			require.NotEqual(t, bad, k, "the damaged block %d is held", k)
			require.True(t, bytes.Equal(orig[blockAt(k):blockAt(k+1)], b), "block %d held is not the file's", k)
		}
		cached := 0
		for k := range nb {
			if v, ok := l.cache.Get(s.ns, blockAt(k)); ok {
				good(k, v.Bytes())
				v.Release()
				cached++
			}
		}
		for i := range l.indexRuns.slots {
			r := l.indexRuns.slots[i].Load()
			if r == nil || r.ns != s.ns || !r.v.Acquire(r.id) {
				continue
			}
			for j := range r.n {
				good(r.k+j, r.v.Bytes()[j*indexBlockLen:(j+1)*indexBlockLen])
			}
			r.v.Release()
		}
		t.Logf("%d blocks cached", cached)
		_, _, err := coldRead(t, l, d, sum.First[bad].Off+1)
		var ce *CorruptionError
		require.True(t, errors.As(err, &ce), "a point read through the damaged block %d: %v", bad, err)
		assert.Equal(t, badAt, ce.Position)
	}

	for _, k := range []int{0, 1, raIndexBlocks - 1, raIndexBlocks, raIndexBlocks + 1, nb - 2, nb - 1} {
		t.Run(fmt.Sprintf("flip=%d", k), func(t *testing.T) {
			for _, at := range []int64{0, 8, 100, indexBlockLen - 1} {
				testutil.XorByte(t, file, blockAt(k)+at, 0x40)
				check(t, k, blockAt(k))
				testutil.XorByte(t, file, blockAt(k)+at, 0x40)
			}
		})
	}
	for _, k := range []int{raIndexBlocks + 2, nb - 1} {
		t.Run(fmt.Sprintf("cut=%d", k), func(t *testing.T) {
			// The file cut inside block k while the segment is loaded.
			require.NoError(t, os.Truncate(file, blockAt(k)+indexBlockLen/2))
			check(t, k, blockAt(k))
			require.NoError(t, os.WriteFile(file, orig, 0o644))
		})
	}
}

// TestIndexRunsWithLargeMemoryAlignment: with a device whose buffers must
// be aligned to more than a cache block's 512 bytes, runs are read into a
// buffer of the device's alignment and copied: every record is right and
// the index is still read in runs.
func TestIndexRunsWithLargeMemoryAlignment(t *testing.T) {
	for _, mem := range []int{4096, 8192} {
		t.Run(fmt.Sprintf("mem=%d", mem), func(t *testing.T) {
			sd := blockdev.NewSimDir(blockdev.SimOptions{Alignment: blockdev.Alignment{Memory: mem, Offset: 4096, Block: 4096}})
			o := testOptions(sd)
			o.CacheBytes = 64 << 10
			l := indexRunsLog(t, "sim", o)
			defer func() { require.NoError(t, l.Close()) }()
			segs := *l.segs.Load()
			runs := 0
			for _, s := range segs[:len(segs)-1] {
				runs += (len(s.sum.Load().First) + raIndexBlocks - 1) / raIndexBlocks
			}
			before := l.indexMisses.Load()
			end := segs[len(segs)-2].vis().off
			for off := uint64(0); off < end; off++ {
				got, err := l.Read(off, nil)
				require.NoError(t, err)
				require.NoError(t, checkOffRecord(off, got, 300))
			}
			assert.LessOrEqual(t, l.indexMisses.Load()-before, int64(runs+2*(len(segs)-1)))
		})
	}
}

// TestIndexRunsRaceChanges: in-order readers of sealed segments (more
// than there are streams) while the front is truncated, the back is
// truncated and the log is closed: every read is its record or an error
// of the change (out of range, closed), and once the log and its shared
// cache are closed no block is held (the runs let go of theirs).
func TestIndexRunsRaceChanges(t *testing.T) {
	for _, change := range []string{"close", "front", "back"} {
		t.Run(change, func(t *testing.T) {
			c, err := cache.New(64 << 10)
			require.NoError(t, err)
			defer c.Close()
			o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
			o.Cache = c
			l := indexRunsLog(t, "sim", o)
			segs := *l.segs.Load()
			var wg, warm sync.WaitGroup
			start := make(chan struct{})
			for r := range 6 {
				s := segs[r%(len(segs)-1)]
				from := s.base + uint64(r)*37
				wg.Add(1)
				warm.Add(1)
				go func() {
					defer wg.Done()
					warmed := false
					defer func() {
						if !warmed {
							warm.Done()
						}
					}()
					<-start
					for off := from; off < s.vis().off; off++ {
						if !warmed && off == from+200 {
							warmed = true
							warm.Done()
						}
						got, err := l.Read(off, nil)
						if err != nil {
							if !errors.Is(err, ErrClosed) && !errors.Is(err, ErrOutOfRange) {
								assert.NoError(t, err, "offset %d", off)
							}
							return
						}
						if err := checkOffRecord(off, got, 300); err != nil {
							assert.NoError(t, err)
							return
						}
					}
				}()
			}
			close(start)
			warm.Wait() // every reader is running its read-ahead
			switch change {
			case "front":
				require.NoError(t, l.TruncateFront(segs[2].base))
			case "back":
				require.NoError(t, l.TruncateBack(segs[1].base+5))
			}
			require.NoError(t, l.Close())
			wg.Wait()
			c.Close()
			st := c.Stats()
			assert.Zero(t, st.Mapped, "blocks still held after the log and its cache closed: %+v", st)
		})
	}
}
