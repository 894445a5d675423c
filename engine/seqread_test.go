package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// seqCaches are the two cache sizes the sequential-read tests use: one
// with room for the whole log (read-ahead copies the intervals it read
// into it; 64 MiB, so that the cache takes 4 MiB of values in flight) and
// one of 64 KiB, which has no room and refuses every chunk.
var seqCaches = []int64{64 << 20, 64 << 10}

// seqLogCache is seqLog (frames of batch records of size bytes, reopened)
// with a cache of cacheBytes.
func seqLogCache(t *testing.T, frames, batch, size int, cacheBytes int64) (*Log, *countingDir) {
	t.Helper()
	d := &countingDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{})}
	o := testOptions(d)
	o.SegmentSize, o.MaxWrite, o.CacheBytes = 1<<20, 256<<10, cacheBytes
	l, err := Open("sim", o)
	require.NoError(t, err)
	for range frames {
		recs := make([][]byte, batch)
		for k := range recs {
			recs[k] = freshRecord(l.EndOffset()+uint64(k), size, 0)
		}
		_, err := l.Append(recs...)
		require.NoError(t, err)
	}
	require.NoError(t, l.Close())
	l, err = Open("sim", o)
	require.NoError(t, err)
	return l, d
}

// TestSequentialReadFillsTheCache: a run over a log that the cache has
// room for is read ahead (whatever the cache's fill: a run never waits on
// small reads), reads each byte from the device about once, and leaves
// every index interval it read in the cache: random reads after it (every
// record once, shuffled) read nothing from the device and get the right
// bytes. That is what a "hot" measurement does: every record read once in
// order, then random reads.
func TestSequentialReadFillsTheCache(t *testing.T) {
	const frames, batch, size = 40, 64, 1 << 10
	for _, batchOf := range []int{batch, 1} {
		t.Run(fmt.Sprintf("batch=%d", batchOf), func(t *testing.T) {
			l, d := seqLogCache(t, frames*batch/batchOf, batchOf, size, seqCaches[0])
			defer l.Close()
			n := uint64(frames * batch)
			before := d.bytes.Load()
			for i := range n {
				got, err := l.Read(i, nil)
				require.NoError(t, err)
				require.Equal(t, freshRecord(i, size, 0), got, "offset %d", i)
			}
			l.ra.wg.Wait()
			l.cache.Wait()
			st := l.Stats()
			seq := d.bytes.Load() - before
			t.Logf("sequential: %d KiB of records, %d KiB from the device, %d KiB read ahead, %d read-ahead hits", n*size>>10, seq>>10, st.ReadAheadBytes>>10, st.ReadAheadHits)
			assert.Greater(t, st.ReadAheadHits, int64(n)*9/10, "read ahead although the cache had room")
			assert.LessOrEqual(t, seq, int64(n)*(size+64)+4*raSpan, "each byte read about once")

			before = d.bytes.Load()
			order := make([]uint64, n)
			for i := range order {
				order[i] = uint64(i)
			}
			for i := range order { // a fixed shuffle, no adjacent offsets in a row
				j := (i * 7919) % len(order)
				order[i], order[j] = order[j], order[i]
			}
			for _, off := range order {
				got, err := l.Read(off, nil)
				require.NoError(t, err)
				require.Equal(t, freshRecord(off, size, 0), got, "offset %d", off)
			}
			// Only the active segment's last interval is not cached (it is
			// read through the log's tail chunk): a few hundred bytes.
			assert.LessOrEqual(t, d.bytes.Load()-before, int64(8<<10), "random reads after the run read the device")
		})
	}
}

// TestRandomReadsCostNoReadAhead: point reads that never read the offset
// after the one before (whatever the cache's room) start no read-ahead:
// no read-ahead byte, no read-ahead hit, and each costs at most its own
// index interval.
func TestRandomReadsCostNoReadAhead(t *testing.T) {
	const frames, batch, size = 40, 64, 1 << 10
	for _, cb := range seqCaches {
		t.Run(fmt.Sprintf("cache=%d", cb), func(t *testing.T) {
			l, d := seqLogCache(t, frames, batch, size, cb)
			defer l.Close()
			n := uint64(frames * batch)
			before := d.bytes.Load()
			reads := 0
			for i := uint64(0); i < n; i += 3 { // every third record, in a scattered order
				off := (i * 7919) % n
				_, err := l.Read(off, nil)
				require.NoError(t, err)
				reads++
			}
			l.ra.wg.Wait()
			st := l.Stats()
			assert.Zero(t, st.ReadAheadBytes)
			assert.Zero(t, st.ReadAheadHits)
			assert.LessOrEqual(t, d.bytes.Load()-before, int64(reads)*(size+8<<10))
		})
	}
}

// TestSequentialReadFindsEveryFlippedRecord flips one byte of each
// record's bytes in the files of a closed log (one record at a time; every
// ninth record, so each place in a batch of 7, unless SEGSTORE_LONG=1), and
// reads every record in order in a fresh process: the damaged record is a
// corruption error, and so are at most the records after it in its index
// interval (a point read walks the records from the interval's entry, and
// checks each); the others come back exact, read ahead.
// With a cache that has room (read-ahead copies what it read into it) and
// one that has none.
func TestSequentialReadFindsEveryFlippedRecord(t *testing.T) {
	for _, cb := range seqCaches {
		t.Run(fmt.Sprintf("cache=%d", cb), func(t *testing.T) {
			dir := t.TempDir()
			o := DefaultOptions()
			o.SegmentSize, o.MaxWrite, o.IndexInterval, o.CacheBytes, o.Logger = 64<<10, 16<<10, 1024, cb, quiet
			l, err := Open(dir, o)
			require.NoError(t, err)
			const size = 900
			for range 29 { // about 180 KiB: three segments, batches of 7
				var recs [][]byte
				for k := range 7 {
					recs = append(recs, freshRecord(l.EndOffset()+uint64(k), size, 0))
				}
				_, err := l.Append(recs...)
				require.NoError(t, err)
			}
			end := l.EndOffset()
			require.NoError(t, l.Close())
			files := map[string][]byte{}
			names, err := os.ReadDir(dir)
			require.NoError(t, err)
			for _, e := range names {
				if _, ok := ParseSegmentName(e.Name()); ok {
					files[e.Name()], err = os.ReadFile(filepath.Join(dir, e.Name()))
					require.NoError(t, err)
				}
			}
			require.Greater(t, len(files), 2)
			var aheadHits int64
			stride := uint64(9)
			if testutil.Long() {
				stride = 1
			}
			for off := uint64(0); off < end; off += stride {
				rec := freshRecord(off, size, 0)
				file, at := "", -1
				for name, b := range files {
					if i := bytes.Index(b, rec); i >= 0 {
						file, at = name, i
					}
				}
				require.NotEqual(t, -1, at, "offset %d's bytes are in no segment file", off)
				b := slices.Clone(files[file])
				b[at+len(rec)-1] ^= 0x10 // its last byte: a record's checksum must catch it
				require.NoError(t, os.WriteFile(filepath.Join(dir, file), b, 0o644))

				l, err := Open(dir, o)
				require.NoError(t, err)
				for k := range end {
					got, err := l.Read(k, nil)
					if k == off || (k+8 > off && k < off+8 && err != nil) {
						require.ErrorIs(t, err, ErrCorrupt, "offset %d (record %d flipped)", k, off)
						continue
					}
					require.NoError(t, err, "offset %d (record %d flipped)", k, off)
					require.Equal(t, freshRecord(k, size, 0), got, "offset %d (record %d flipped)", k, off)
				}
				aheadHits += l.Stats().ReadAheadHits
				require.NoError(t, l.Close())
				require.NoError(t, os.WriteFile(filepath.Join(dir, file), files[file], 0o644))
			}
			assert.Greater(t, aheadHits, int64(end)*int64(end/stride)/2, "the reads were read ahead")
		})
	}
}

// TestSequentialReadDuringChanges: a run of reads goes on while the log
// changes under it: appends (the run follows the growing active segment
// and never returns a record past the acknowledged end), rolls, a
// TruncateBack of the run's own records (those appended again read their
// new bytes), a TruncateFront (offsets cut are out of range), and Close
// racing the read-ahead: after Close no read-ahead goroutine runs and no
// read-ahead buffer is held.
func TestSequentialReadDuringChanges(t *testing.T) {
	const size = 700
	for _, cb := range seqCaches {
		t.Run(fmt.Sprintf("cache=%d", cb), func(t *testing.T) {
			d := &countingDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{})}
			o := testOptions(d)
			o.SegmentSize, o.MaxWrite, o.CacheBytes = 256<<10, 64<<10, cb
			l, err := Open("sim", o)
			require.NoError(t, err)
			var gen sync.Map // offset → the generation of its bytes
			genOf := func(off uint64) byte {
				g, _ := gen.Load(off)
				b, _ := g.(byte)
				return b
			}
			appendRecs := func(n int, g byte) {
				recs := make([][]byte, n)
				first := l.EndOffset()
				for k := range recs {
					gen.Store(first+uint64(k), g)
					recs[k] = freshRecord(first+uint64(k), size, g)
				}
				_, err := l.Append(recs...)
				require.NoError(t, err)
			}
			next := uint64(0)
			readTo := func(to uint64) {
				for ; next < to; next++ {
					got, err := l.Read(next, nil)
					require.NoError(t, err, "offset %d", next)
					require.Equal(t, freshRecord(next, size, genOf(next)), got, "offset %d", next)
				}
				_, err := l.Read(to, nil)
				require.ErrorIs(t, err, ErrOutOfRange, "offset %d, the end", to)
			}
			// Appends interleaved with the run, across rolls.
			for i := range 40 {
				appendRecs(1+i%17, 0)
				if i%9 == 8 {
					require.NoError(t, l.Roll())
				}
				readTo(l.EndOffset())
			}
			// Cut the run's last records and append others in their place.
			cut := l.EndOffset() - 30
			require.NoError(t, l.TruncateBack(cut))
			next = cut - 50
			appendRecs(60, 1)
			readTo(l.EndOffset())
			// Cut the front: the run's old offsets are gone.
			require.NoError(t, l.TruncateFront(l.Segments()[1].Base))
			_, err = l.Read(0, nil)
			require.ErrorIs(t, err, ErrOutOfRange)
			next = l.StartOffset()
			readTo(l.EndOffset())
			require.Greater(t, l.Stats().ReadAheadHits, int64(0), "the run was read ahead")

			// Close while a run reads ahead, from another goroutine.
			next = l.StartOffset()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for off := next; ; off++ {
					if _, err := l.Read(off, nil); err != nil {
						if !errors.Is(err, ErrClosed) {
							require.ErrorIs(t, err, ErrOutOfRange)
						}
						return
					}
				}
			}()
			_, err = l.Read(next+3, nil)
			require.NoError(t, err)
			require.NoError(t, l.Close())
			<-done
			requireNoReadAhead(t, l)
		})
	}
}

// TestReadAheadReadsIndexBlocksInRuns: a sequential scan of sealed
// segments that keep only their footer's summary reads their index blocks
// raIndexBlocks at a time (one device read per run), with a cache that has
// room for them and with one that holds almost nothing; read one by one,
// they were a synchronous 4 KiB read before every other chunk. Every
// record read is the right one. A flipped byte in an index block that a
// run holds (not its first) ends the run there: the scan returns the
// right record or a CorruptionError naming that block, never other bytes,
// and a point read through that block afterwards reports it.
func TestReadAheadReadsIndexBlocksInRuns(t *testing.T) {
	for _, cacheBytes := range seqCaches {
		t.Run(fmt.Sprintf("cache=%d", cacheBytes), func(t *testing.T) {
			dir := t.TempDir()
			od, err := blockdev.OpenDir(dir, false)
			require.NoError(t, err)
			d := &countingDir{Dir: od}
			o := testOptions(d)
			o.CacheBytes = cacheBytes
			l := indexRunsLog(t, dir, o)
			defer func() { require.NoError(t, l.Close()) }()

			segs := *l.segs.Load()
			sealed := segs[:len(segs)-1]
			runs := 0
			for _, s := range sealed {
				sum := s.sum.Load()
				require.Greater(t, len(sum.First), raIndexBlocks+4, "segment %d: the test needs segments of several runs of blocks", s.base)
				runs += (len(sum.First) + raIndexBlocks - 1) / raIndexBlocks
			}
			end := sealed[len(sealed)-1].vis().off
			before := l.indexMisses.Load()
			for off := uint64(0); off < end; off++ {
				got, err := l.Read(off, nil)
				require.NoError(t, err)
				require.NoError(t, checkOffRecord(off, got, 300))
			}
			misses := l.indexMisses.Load() - before
			t.Logf("%d index block reads for %d runs of %d blocks (%d segments)", misses, runs, raIndexBlocks, len(sealed))
			assert.LessOrEqual(t, misses, int64(runs+2*len(sealed)), "index blocks read in runs")

			// A damaged block inside a run.
			l.ra.wg.Wait()
			s := sealed[1]
			sum := s.sum.Load()
			k := raIndexBlocks + 3
			testutil.XorByte(t, filepath.Join(dir, s.name), sum.BlocksAt+int64(k*indexBlockLen)+100, 0x40)
			for _, ss := range *l.segs.Load() {
				ss.ns = l.cache.NewNamespace() // nothing cached
			}
			l.tail.Store(nil)
			l.indexRuns.drop()
			at := sum.BlocksAt + int64(k*indexBlockLen)
			for off := s.base; off < s.vis().off; off++ {
				got, err := l.Read(off, nil)
				var ce *CorruptionError
				if errors.As(err, &ce) {
					require.Equal(t, at, ce.Position, "offset %d: %v", off, err)
					continue
				}
				require.NoError(t, err, "offset %d", off)
				require.NoError(t, checkOffRecord(off, got, 300), "offset %d", off)
			}
			// The run kept (and cached) only the blocks before the damaged
			// one: a point read that needs it reads it and reports it.
			l.ra.wg.Wait()
			_, _, err = coldRead(t, l, d, sum.First[k].Off+1)
			var ce *CorruptionError
			require.True(t, errors.As(err, &ce), "a point read through the damaged block: %v", err)
			assert.Equal(t, at, ce.Position)
		})
	}
}

// TestSequentialReaderAmongRandomReaders: a run is found whatever other
// reads come between its reads (a follower replicating while clients read
// at random). One in-order reader's reads alternate with 1 to 16 random
// reads each: the run is read ahead (most of its reads are read-ahead
// hits) and every record is right. The log used to remember the last four
// reads only, and five random reads between two of a run's hid it.
func TestSequentialReaderAmongRandomReaders(t *testing.T) {
	const frames, batch, size = 400, 64, 1 << 10
	l, _ := seqLogCache(t, frames, batch, size, seqCaches[1])
	defer l.Close()
	n := uint64(frames * batch)
	for k, between := range []int{1, 4, 5, 16} {
		t.Run(fmt.Sprintf("between=%d", between), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(between), 1))
			const run = 2000
			from := uint64(2*run + k*3*run) // a run of its own, far from the others'
			hits := int64(0)
			for i := from; i < from+run; i++ {
				before := l.ra.hits.Load()
				got, err := l.Read(i, nil)
				require.NoError(t, err)
				require.Equal(t, freshRecord(i, size, 0), got, "offset %d", i)
				hits += l.ra.hits.Load() - before
				for range between {
					off := rng.Uint64N(n)
					for off >= from-run && off < from+2*run { // not near the run
						off = rng.Uint64N(n)
					}
					got, err := l.Read(off, nil)
					require.NoError(t, err)
					require.Equal(t, freshRecord(off, size, 0), got, "offset %d", off)
				}
			}
			t.Logf("%d random reads between in-order ones: %d of %d in-order reads served by read-ahead", between, hits, run)
			assert.Greater(t, hits, int64(run)*8/10, "the run is read ahead")
		})
	}
}

// TestRandomReadsReadLittleAhead: random reads, uniform and Zipf (newest
// hottest, as clients read a log), start few runs: the bytes read ahead
// stay a small part of what the point reads themselves read. A Zipf
// reader reads the hottest records one after another often; two
// consecutive offsets do not make a run, three do, and only in ascending
// order (offsets read again in descending order make none).
func TestRandomReadsReadLittleAhead(t *testing.T) {
	const frames, batch, size = 400, 64, 1 << 10
	l, d := seqLogCache(t, frames, batch, size, seqCaches[1])
	defer l.Close()
	n := uint64(frames * batch)
	for _, dist := range []string{"uniform", "zipf"} {
		t.Run(dist, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(7, 1))
			zipf := newZipf(rng, 1.1, n)
			aheadBefore, before := l.ra.bytes.Load(), d.bytes.Load()
			for range 20000 {
				off := rng.Uint64N(n)
				if dist == "zipf" {
					off = n - 1 - zipf()
				}
				got, err := l.Read(off, nil)
				require.NoError(t, err)
				require.Equal(t, freshRecord(off, size, 0), got, "offset %d", off)
			}
			for range 2 { // 40 offsets read in descending order, twice
				for off := n / 2; off > n/2-40; off-- {
					_, err := l.Read(off, nil)
					require.NoError(t, err)
				}
			}
			l.ra.wg.Wait()
			ahead, all := l.ra.bytes.Load()-aheadBefore, d.bytes.Load()-before
			t.Logf("%s: %d KiB read ahead of %d KiB read", dist, ahead>>10, all>>10)
			assert.LessOrEqual(t, ahead, all/10, "read ahead for random reads")
		})
	}
}

// newZipf returns a draw of ranks in [0, n) with P(k) ∝ (k+1)^-s.
func newZipf(rng *rand.Rand, s float64, n uint64) func() uint64 {
	cdf := make([]float64, n)
	sum := 0.0
	for k := range cdf {
		sum += math.Pow(float64(k+1), -s)
		cdf[k] = sum
	}
	return func() uint64 {
		return uint64(sort.SearchFloat64s(cdf, rng.Float64()*sum))
	}
}
