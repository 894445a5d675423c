package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// coldRead reads offset off with nothing of it cached: every segment's
// cache namespace is made anew (so the cache, the fresh appends and the
// read-ahead streams, all keyed by it, miss), and the log's tail chunk
// dropped. It returns the record and the device bytes the read cost.
// Callers read in descending offset order, so no read-ahead stream (reads
// one offset past the last) forms and reads beside the one measured.
//
// The device bytes it returns are those of the records: a sealed
// segment's index block, which a cold read reads too (its index is on
// disk), is counted apart, and checked here to be at most one block.
func coldRead(t *testing.T, l *Log, d *countingDir, off uint64) ([]byte, int64, error) {
	t.Helper()
	for _, s := range *l.segs.Load() {
		s.ns = l.cache.NewNamespace()
	}
	l.tail.Store(nil)
	before, index := d.bytes.Load(), l.indexReadBytes.Load()
	rec, err := l.Read(off, nil)
	index = l.indexReadBytes.Load() - index
	if index > int64(indexBlockLen) { // testify's comparison, per read, costs more than the read
		require.LessOrEqual(t, index, int64(indexBlockLen), "a cold read of offset %d read %d bytes of index blocks", off, index)
	}
	return rec, d.bytes.Load() - before - index, err
}

// pointRecord is record off of the sweep, size bytes long.
func pointRecord(off uint64, size int) []byte {
	return testutil.Labelled(fmt.Sprint(off), byte(off*7+1), size)
}

// TestPointReadCostsTheRecordPlus8KiB: whatever the size of the batch that
// wrote it, a cold point read of a record of n bytes reads at most n +
// 8 KiB from the device and returns the record, from the active segment
// and once it is sealed (its footer loaded before the count; a sealed
// segment's index stays on disk, so a cold read reads one 4 KiB index
// block besides, counted apart by coldRead): every
// record of batches of 1, 7, 64 and 1024 records (as many as one write
// takes) of each of the sizes 1 B to 1 MiB, across 4 KiB blocks and frame
// boundaries.
func TestPointReadCostsTheRecordPlus8KiB(t *testing.T) {
	sizes := []int{1, 100, 1 << 10, 4<<10 - 1, 4 << 10, 4<<10 + 1, 64 << 10, 1 << 20}
	batches := []int{1, 7, 64, 1024}
	for _, size := range sizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			t.Parallel() // its own simulated directory; a core busy each
			d := &countingDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{})}
			o := DefaultOptions()
			o.Dir, o.Logger, o.SegmentSize, o.NoPreallocate = d, quiet, 256<<20, true
			l, err := Open("sim", o)
			require.NoError(t, err)
			defer l.Close()
			maxBatch := l.active.w.MaxBatchBytes() / (size + 8 + wal.RecordHeaderLen)
			var want []int
			for _, n := range batches {
				n = min(n, maxBatch)
				recs := make([][]byte, n)
				for i := range recs {
					// A record a few bytes off the size now and then moves
					// the following ones across block boundaries.
					recs[i] = pointRecord(l.EndOffset()+uint64(i), size+(i%3)*(i%5))
				}
				first, err := l.Append(recs...)
				require.NoError(t, err)
				for i := range recs {
					want = append(want, len(recs[i]))
					require.EqualValues(t, first+uint64(i), len(want)-1)
				}
			}
			check := func(state string) {
				worst := int64(0)
				for off := len(want) - 1; off >= 0; off-- {
					n := want[off]
					rec, cost, err := coldRead(t, l, d, uint64(off))
					require.NoError(t, err, "%s offset %d", state, off)
					require.Equal(t, pointRecord(uint64(off), n), rec, "%s offset %d", state, off)
					require.LessOrEqual(t, cost, int64(n)+8<<10, "%s offset %d of %d bytes read %d device bytes", state, off, n, cost)
					worst = max(worst, cost-int64(n))
				}
				t.Logf("%s: %d records, at most %d device bytes beyond the record", state, len(want), worst)
			}
			check("active")
			require.NoError(t, l.Roll())
			s := (*l.segs.Load())[0]
			require.True(t, s.isSealed())
			require.Nil(t, s.index, "a sealed segment keeps no index entries in memory")
			require.NotNil(t, s.sum.Load(), "a sealed segment keeps its footer's summary")
			check("sealed")
		})
	}
}

// TestFlippedRecordByteIsDetected: one flipped bit inside any record's
// bytes (every record of a store with a sealed and an active segment; a
// sample of the bits of every byte with SEGSTORE_LONG=1) is found by a
// cold point read, by an iterator, by a mapped walk (sealed segments) and
// by Verify, and is never returned as the record.
func TestFlippedRecordByteIsDetected(t *testing.T) {
	dir := t.TempDir()
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.CacheBytes, o.Logger = 1<<20, 64<<10, 1<<20, quiet
	d, err := blockdev.OpenDir(dir, false)
	require.NoError(t, err)
	cd := &countingDir{Dir: d}
	o.Dir = cd
	l, err := Open(dir, o)
	require.NoError(t, err)
	defer l.Close()
	type loc struct {
		off  uint64
		file string
		pos  int64 // of the record's bytes
		n    int
	}
	var recs []loc
	sizes := []int{1, 37, 500, 4095, 4097, 9000}
	for seg := 0; seg < 2; seg++ {
		for b := 0; b < 8; b++ {
			batch := make([][]byte, 1+b)
			for i := range batch {
				batch[i] = pointRecord(l.EndOffset()+uint64(i), sizes[(b+i)%len(sizes)])
			}
			_, err := l.Append(batch...)
			require.NoError(t, err)
		}
		if seg == 0 {
			require.NoError(t, l.Roll())
		}
	}
	// Where each record's bytes are, from a scan of the files.
	for _, si := range l.Segments() {
		path := filepath.Join(dir, si.File)
		img, err := os.ReadFile(path)
		require.NoError(t, err)
		hdr, err := wal.DecodeFileHeader(img)
		require.NoError(t, err)
		_, _, err = wal.DecodeFrames(img[wal.DataStart:si.DataEnd], hdr, wal.DataStart, si.Base, func(f wal.Frame) bool {
			p := f.Pos + wal.FrameHeaderLen
			wal.Records(hdr.Version, f.Payload, func(i int, rec []byte) bool {
				recs = append(recs, loc{f.First + uint64(i), path, p + wal.RecordHeaderLen, len(rec)})
				p += wal.RecordHeaderLen + int64(len(rec))
				return true
			})
			return true
		})
		require.NoError(t, err)
	}
	require.EqualValues(t, l.EndOffset(), len(recs))
	flip := func(path string, pos int64, bit uint) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		require.NoError(t, err)
		defer f.Close()
		b := make([]byte, 1)
		_, err = f.ReadAt(b, pos)
		require.NoError(t, err)
		b[0] ^= 1 << bit
		_, err = f.WriteAt(b, pos)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
	}
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		var bytesToFlip []int
		if testutil.Long() {
			for i := 0; i < r.n; i++ {
				bytesToFlip = append(bytesToFlip, i)
			}
		} else {
			bytesToFlip = []int{int(r.off) % r.n}
		}
		for _, i := range bytesToFlip {
			bit := uint(int(r.off)+i) % 8
			flip(r.file, r.pos+int64(i), bit)
			what := fmt.Sprintf("offset %d, byte %d of %d, bit %d", r.off, i, r.n, bit)

			rec, _, err := coldRead(t, l, cd, r.off)
			require.ErrorIs(t, err, ErrCorrupt, "point read: %s returned %q", what, rec)

			it := l.NewIterator(r.off)
			for it.Next() {
				require.NotEqual(t, r.off, it.Offset(), "iterator returned the damaged record: %s", what)
			}
			require.ErrorIs(t, it.Err(), ErrCorrupt, "iterator: %s", what)
			require.NoError(t, it.Close())

			si := l.Segments()[0]
			if r.off < si.Next {
				v, err := l.OpenSegment(si.Base)
				require.NoError(t, err)
				m, err := v.Mmap()
				require.NoError(t, err)
				mi := m.NewIterator()
				for mi.Next() {
					require.NotEqual(t, r.off, mi.Offset(), "mapped walk returned the damaged record: %s", what)
				}
				require.ErrorIs(t, mi.Err(), ErrCorrupt, "mapped walk: %s", what)
				require.NoError(t, m.Close())
				require.NoError(t, v.Close())
			}

			rep, err := Verify(dir, VerifyOptions{})
			require.NoError(t, err)
			require.NotEmpty(t, rep.Problems, "verify: %s", what)
			require.Equal(t, ProblemCorruption, rep.Problems[0].Kind, "verify: %s: %v", what, rep.Problems)

			flip(r.file, r.pos+int64(i), bit)
		}
	}
	// Restored: everything reads again.
	for i := len(recs) - 1; i >= 0; i-- {
		r := recs[i]
		rec, _, err := coldRead(t, l, cd, r.off)
		require.NoError(t, err)
		require.Equal(t, pointRecord(r.off, r.n), rec)
	}
	var ce *CorruptionError
	require.False(t, errors.As(nil, &ce))
}
