package engine

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// cacheInUse is the memory the log's cache has handed out and not had
// back: its mapped slabs less its free blocks.
func cacheInUse(l *Log) int64 { st := l.cache.Stats(); return st.Mapped - st.Pooled }

// TestAsideCopiesAreBoundedWhileAppendersWait: many appenders of large
// batches, most of them waiting for the writer's buffer or its fdatasync
// (slow here), do not each hold a copy of their batch for the
// write-through cache while they wait: the memory the cache hands out
// stays within a few of its bounds (what it keeps and what is being
// copied beside a write) and the batches the writer's two buffers hold,
// whatever the number of appenders. Every record reads back as appended.
func TestAsideCopiesAreBoundedWhileAppendersWait(t *testing.T) {
	const appenders, recSize = 48, 1 << 20
	sim := blockdev.NewSimDir(blockdev.SimOptions{SyncLatency: 2 * time.Millisecond})
	o := testOptions(sim)
	o.SegmentSize, o.MaxWrite, o.CacheBytes = 256<<20, 4<<20, 64<<20 // fresh holds 4 MiB
	o.NoPreallocate = true                                           // no segment's worth of zeros written into memory, under -race
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	require.GreaterOrEqual(t, recSize, freshAside)
	// What fresh keeps and what is copied beside writes (each within the
	// bound, in blocks up to an eighth larger than asked), and the copies
	// made after the writes that one flush acknowledged.
	bound := cacheInUse(l) + 3*int64(l.fresh.maxBytes) + 2*int64(o.MaxWrite)

	var peak atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak.Store(max(peak.Load(), cacheInUse(l)))
			select {
			case <-stop:
				return
			default:
				time.Sleep(20 * time.Microsecond)
			}
		}
	}()
	var mu sync.Mutex
	firsts := map[uint64]int{}
	var wg sync.WaitGroup
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := freshRecord(uint64(a), recSize, 7)
			first, err := l.Append(rec)
			if !assert.NoError(t, err) {
				return
			}
			mu.Lock()
			firsts[first] = a
			mu.Unlock()
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	assert.LessOrEqual(t, peak.Load(), bound, "cache memory in use while %d appenders of %d bytes waited", appenders, recSize)
	for first, a := range firsts {
		got, err := l.Read(first, nil)
		require.NoError(t, err)
		require.Equal(t, freshRecord(uint64(a), recSize, 7), got, "offset %d", first)
	}
}

// TestAppendersMayReuseTheirRecordsOnReturn: an appender that overwrites
// its records as soon as Append returns (batches just under, at and over
// the size copied beside the write, up to the write-through cache's
// bound, 1 to 8 appenders at once) does not change what is read back, and
// the race detector sees no read of the records after the return.
func TestAppendersMayReuseTheirRecordsOnReturn(t *testing.T) {
	cases := []struct {
		name  string
		sizes []int
	}{
		{"aside-1", []int{freshAside - 1}},
		{"aside", []int{freshAside}},
		{"aside-split", []int{freshAside / 2, freshAside / 2}},
		{"bound", []int{2<<20 - 4}}, // the whole bound: CacheBytes/8, less the length table
		{"over-bound", []int{2<<20 + 1}},
	}
	for _, tc := range cases {
		for _, appenders := range []int{1, 8} {
			t.Run(fmt.Sprintf("%s/%d", tc.name, appenders), func(t *testing.T) {
				o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
				o.SegmentSize, o.MaxWrite, o.CacheBytes = 64<<20, 4<<20, 16<<20 // fresh holds 2 MiB
				o.NoPreallocate = true                                          // no segment's worth of zeros written into memory, under -race
				l, err := Open("sim", o)
				require.NoError(t, err)
				defer l.Close()
				type acked struct {
					first uint64
					want  [][]byte
				}
				var mu sync.Mutex
				var all []acked
				var wg sync.WaitGroup
				for a := range appenders {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := range 3 {
							recs := make([][]byte, len(tc.sizes))
							want := make([][]byte, len(tc.sizes))
							for k, n := range tc.sizes {
								recs[k] = freshRecord(uint64(a*100+i*10+k), n, 1)
								want[k] = append([]byte(nil), recs[k]...)
							}
							first, err := l.Append(recs...)
							for _, r := range recs {
								testutil.FillXor(r, 0, 0xee) // reused at once
							}
							if !assert.NoError(t, err) {
								return
							}
							mu.Lock()
							all = append(all, acked{first, want})
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				for _, ack := range all {
					for k, want := range ack.want {
						got, err := l.Read(ack.first+uint64(k), nil)
						require.NoError(t, err)
						require.Equal(t, want, got, "offset %d", ack.first+uint64(k))
					}
				}
			})
		}
	}
}

// TestFailedLargeAppendsDropTheirCopy: an Append of a batch copied beside
// the write that fails (a write or fdatasync failure, a batch too large,
// a closed log) leaves the cache's memory in use as it was; one that
// moves to a new segment because the old one's MaxWrite is smaller keeps
// exactly one copy, read back with no device read.
func TestFailedLargeAppendsDropTheirCopy(t *testing.T) {
	batch := func(gen byte, sizes ...int) [][]byte {
		r := make([][]byte, len(sizes))
		for k, n := range sizes {
			r[k] = freshRecord(uint64(k), n, gen)
		}
		return r
	}
	cases := []struct {
		name   string
		inject func(t *testing.T, l *Log, sim *blockdev.SimDir)
		recs   [][]byte
		errIs  error
	}{
		{"write", func(t *testing.T, l *Log, sim *blockdev.SimDir) {
			f := sim.File(segName(l.Segments()[len(l.Segments())-1].Base))
			f.FailNth(blockdev.OpWrite, f.Calls(blockdev.OpWrite)+1)
		}, batch(1, 300<<10), wal.ErrFailed},
		{"sync", func(t *testing.T, l *Log, sim *blockdev.SimDir) {
			f := sim.File(segName(l.Segments()[len(l.Segments())-1].Base))
			f.FailNth(blockdev.OpSync, f.Calls(blockdev.OpSync)+1)
		}, batch(2, freshAside, 1000), wal.ErrFailed},
		{"too-large", func(*testing.T, *Log, *blockdev.SimDir) {}, batch(3, 1<<20, 1<<20), wal.ErrBatchTooLarge},
		{"closed", func(t *testing.T, l *Log, _ *blockdev.SimDir) { require.NoError(t, l.Close()) }, batch(4, 512<<10), ErrClosed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sim := blockdev.NewSimDir(blockdev.SimOptions{})
			o := testOptions(sim)
			o.SegmentSize, o.MaxWrite, o.CacheBytes = 8<<20, 1<<20, 32<<20
			o.NoPreallocate = true // no segment's worth of zeros written into memory, under -race
			l, err := Open("sim", o)
			require.NoError(t, err)
			defer l.Close()
			_, err = l.Append(batch(0, 300<<10)...) // one batch held
			require.NoError(t, err)
			tc.inject(t, l, sim)
			held := cacheInUse(l)
			_, err = l.Append(tc.recs...)
			require.Error(t, err)
			assert.True(t, errors.Is(err, tc.errIs), "%v", err)
			assert.Equal(t, held, cacheInUse(l), "the failed append's copy is dropped")
		})
	}

	t.Run("new-segment", func(t *testing.T) {
		sim := blockdev.NewSimDir(blockdev.SimOptions{})
		d := &countingDir{Dir: sim}
		o := testOptions(d)
		o.SegmentSize, o.MaxWrite, o.CacheBytes = 16<<20, 512<<10, 32<<20
		o.NoPreallocate = true // no segment's worth of zeros written into memory, under -race
		l, err := Open("sim", o)
		require.NoError(t, err)
		_, err = l.Append(batch(0, 1000)...)
		require.NoError(t, err)
		require.NoError(t, l.Close())
		o.MaxWrite = 2 << 20
		l, err = Open("sim", o)
		require.NoError(t, err)
		defer l.Close()
		held := cacheInUse(l)
		recs := batch(5, 1<<20)
		first, err := l.Append(recs...)
		require.NoError(t, err)
		require.Len(t, l.fresh.batches, 1)
		// Sealing the old segment lets go of a few small values.
		kept := int64(l.fresh.batches[0].size)
		assert.InDelta(t, held+kept, cacheInUse(l), 4<<10, "one copy kept, the first attempt's dropped")
		before := d.bytes.Load()
		got, err := l.Read(first, nil)
		require.NoError(t, err)
		assert.Equal(t, recs[0], got)
		assert.Equal(t, before, d.bytes.Load(), "read from the write-through cache")
	})
}

// TestTruncateBackRacingLargeAppendsServesNoCutBatch: large appends (copied
// beside their write) race TruncateBack; after each round every offset
// reads what the device holds, never a batch the cut dropped that the
// write-through cache kept.
func TestTruncateBackRacingLargeAppendsServesNoCutBatch(t *testing.T) {
	o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
	o.SegmentSize, o.MaxWrite, o.CacheBytes = 8<<20, 1<<20, 32<<20
	o.NoPreallocate = true // no segment's worth of zeros written into memory, under -race
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	for round := range 6 {
		var wg sync.WaitGroup
		for a := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 3 {
					_, err := l.Append(freshRecord(uint64(round*100+a*10+i), freshAside+a*1000, byte(round)))
					assert.NoError(t, err)
				}
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if end := l.EndOffset(); end > l.StartOffset()+2 {
				assert.NoError(t, l.TruncateBack(end-2))
			}
		}()
		wg.Wait()
		start, end := l.StartOffset(), l.EndOffset()
		served := make([][]byte, 0, end-start)
		for off := start; off < end; off++ {
			got, err := l.Read(off, nil)
			require.NoError(t, err)
			served = append(served, got)
		}
		l.fresh.release() // now every read comes from the device
		for off := start; off < end; off++ {
			got, err := l.Read(off, nil)
			require.NoError(t, err)
			require.Equal(t, got, served[off-start], "round %d offset %d: the cache served other bytes than the device holds", round, off)
		}
	}
}

// TestCloseRacingLargeAppendsLeavesNoCopy: Close racing appenders of large
// batches: every append either succeeds or fails with ErrClosed, and once
// all have returned the closed log's cache has nothing mapped (no copy
// made beside a write outlives its append).
func TestCloseRacingLargeAppendsLeavesNoCopy(t *testing.T) {
	for _, appenders := range []int{1, 4, 16} {
		t.Run(fmt.Sprint(appenders), func(t *testing.T) {
			o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
			o.SegmentSize, o.MaxWrite, o.CacheBytes = 16<<20, 1<<20, 32<<20
			o.NoPreallocate = true // no segment's worth of zeros written into memory, under -race
			l, err := Open("sim", o)
			require.NoError(t, err)
			var acks atomic.Int64
			var wg sync.WaitGroup
			for a := range appenders {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; ; i++ {
						_, err := l.Append(freshRecord(uint64(a*1000+i), freshAside+a, 3))
						if err != nil {
							assert.ErrorIs(t, err, ErrClosed)
							return
						}
						acks.Add(1)
					}
				}()
			}
			for acks.Load() < int64(appenders) {
				time.Sleep(50 * time.Microsecond)
			}
			require.NoError(t, l.Close())
			wg.Wait()
			st := l.cache.Stats()
			assert.Zero(t, st.Mapped, "cache memory still mapped after Close: %+v", st)
		})
	}
}
