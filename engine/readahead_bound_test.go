package engine

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// boundRecord is the record of offset off in TestReadAheadMemoryIsBounded:
// n bytes that name their offset, so a read that returned another
// offset's bytes is caught.
func boundRecord(off uint64, n int) []byte {
	r := make([]byte, n)
	for i := 0; i < n; i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], off*0x9e3779b97f4a7c15+uint64(i))
		copy(r[i:], w[:])
	}
	return r
}

// TestReadAheadMemoryIsBounded: a log of records from 1 byte to the
// largest a 16 MiB MaxWrite takes (past the read-ahead span, past a
// stream's whole bound), each long one among runs of small ones, in a
// segment of the current format (read ahead by index intervals) and of
// version 2 (read ahead by frames), is read in order by four readers at
// once, each from another offset (four streams). Every read returns its
// offset's bytes; read-ahead ran; and the bytes its buffers held (counted
// when reserved, before each read) never passed raStreamBytes per stream
// nor raTotalBytes in all, whatever the record sizes.
func TestReadAheadMemoryIsBounded(t *testing.T) {
	const maxWrite = 16 << 20
	maxRecord := maxWrite - 8<<10
	sizes := []int{1, 2, 700, 4095, 4097, 300 << 10, 1<<20 - 100, 1<<20 + 100, 2<<20 + 3, 5 << 20, raStreamBytes + 1, maxRecord}
	for _, v := range []uint32{0, 2} {
		t.Run(fmt.Sprint("version ", v), func(t *testing.T) {
			path, o := boundLogOptions(t, v, maxWrite)
			l, err := Open(path, o)
			require.NoError(t, err)
			var want [][]byte // each offset's record, made once: the readers compare against it
			add := func(n int) {
				r := boundRecord(uint64(len(want)), n)
				_, err := l.Append(r)
				require.NoError(t, err)
				want = append(want, r)
			}
			for _, n := range sizes {
				for i := 0; i < 24; i++ {
					add(1 + i*97%3000)
				}
				add(n)
			}
			for i := 0; i < 24; i++ {
				add(1 + i*89%3000)
			}
			require.NoError(t, l.Close())

			l, err = Open(path, o) // from the device: no fresh appends in memory
			require.NoError(t, err)
			defer l.Close()
			var wg sync.WaitGroup
			errs := make(chan error, 4)
			for r := 0; r < 4; r++ {
				wg.Add(1)
				go func(start int) {
					defer wg.Done()
					var buf []byte
					for k := 0; k < len(want); k++ {
						off := (start + k) % len(want)
						got, err := l.Read(uint64(off), buf[:0])
						if err != nil {
							errs <- fmt.Errorf("read %d: %w", off, err)
							return
						}
						if string(got) != string(want[off]) {
							errs <- fmt.Errorf("read %d: %d bytes, not the record's %d", off, len(got), len(want[off]))
							return
						}
						buf = got
					}
				}(r * len(want) / 4)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			require.Positive(t, l.ra.hits.Load(), "read-ahead served reads")
			peak := l.ra.peak.Load()
			t.Logf("read-ahead: %d hits, %d device bytes, peak %d bytes held (bound %d), per stream %v", l.ra.hits.Load(), l.ra.bytes.Load(), peak, raTotalBytes, streamPeaks(l))
			require.LessOrEqual(t, peak, int64(raTotalBytes))
			for i, p := range streamPeaks(l) {
				require.LessOrEqual(t, p, int64(raStreamBytes), "stream %d", i)
			}
			require.NoError(t, l.Close())
			require.Zero(t, l.ra.held.Load(), "every reservation given back at Close")
		})
	}
}

func streamPeaks(l *Log) []int64 {
	var out []int64
	for i := range l.ra.streams {
		out = append(out, l.ra.streams[i].peak.Load())
	}
	return out
}

// TestReadAheadGoesOnAfterARecordPastTheBound: a run reads, in order, small
// records, one record longer than a stream's whole bound (never read
// ahead: its point read reads it) and then many small records, in a
// segment of the current format and of version 2. Every read returns its
// offset's bytes, and read-ahead serves reads after the long record (it
// does not stop for good at it), with its reservations within the bound
// and all given back at Close.
func TestReadAheadGoesOnAfterARecordPastTheBound(t *testing.T) {
	const maxWrite = 16 << 20
	for _, v := range []uint32{0, 2} {
		t.Run(fmt.Sprint("version ", v), func(t *testing.T) {
			path, o := boundLogOptions(t, v, maxWrite)
			l, err := Open(path, o)
			require.NoError(t, err)
			var want [][]byte // each offset's record
			add := func(n int) {
				r := boundRecord(uint64(len(want)), n)
				_, err := l.Append(r)
				require.NoError(t, err)
				want = append(want, r)
			}
			for i := 0; i < 100; i++ {
				add(3000 + i)
			}
			long := len(want)
			add(raStreamBytes + 1)
			for i := 0; i < 40; i++ { // in batches: fewer fsyncs
				var recs [][]byte
				for j := 0; j < 50; j++ {
					r := boundRecord(uint64(len(want)), 3000+j)
					recs = append(recs, r)
					want = append(want, r)
				}
				_, err := l.Append(recs...)
				require.NoError(t, err)
			}
			require.NoError(t, l.Close())
			l, err = Open(path, o)
			require.NoError(t, err)
			defer l.Close()
			var buf []byte
			var hitsAtLong int64
			for off := range want {
				if off == long+1 {
					hitsAtLong = l.ra.hits.Load()
				}
				got, err := l.Read(uint64(off), buf[:0])
				require.NoError(t, err, "read %d", off)
				require.Equal(t, len(want[off]), len(got), "read %d", off)
				require.Equal(t, string(want[off]), string(got), "read %d", off)
				buf = got
			}
			after := l.ra.hits.Load() - hitsAtLong
			t.Logf("read-ahead hits: %d before the long record, %d after it (of %d reads)", hitsAtLong, after, len(want)-long-1)
			require.Positive(t, after, "read-ahead stopped at the record longer than its bound")
			for i, p := range streamPeaks(l) {
				require.LessOrEqual(t, p, int64(raStreamBytes), "stream %d", i)
			}
			require.NoError(t, l.Close())
			require.Zero(t, l.ra.held.Load(), "every reservation given back at Close")
		})
	}
}

// boundLogOptions makes a directory and options for a log that writes
// segments of format version v (0: the current one) with MaxWrite
// maxWrite, 64 MiB segments and a 2 MiB cache: the read-ahead bound tests'.
func boundLogOptions(t *testing.T, v uint32, maxWrite int) (string, Options) {
	formatVersion = v
	t.Cleanup(func() { formatVersion = 0 })
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.CacheBytes, o.Logger = 64<<20, maxWrite, 2<<20, quiet
	// What they test is read back after a close (which syncs): an fsync
	// per append would only make the writing wait on the disk (each
	// Append is one frame in any sync mode).
	o.SyncMode = SyncNever
	return t.TempDir(), o
}
