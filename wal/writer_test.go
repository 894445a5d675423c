package wal

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

func TestAppendAndScanRoundTrip(t *testing.T) {
	devs := map[string]func() blockdev.Device{
		"sim":      func() blockdev.Device { return newSim(1) },
		"direct":   func() blockdev.Device { return newFileDev(t, false) },
		"buffered": func() blockdev.Device { return newFileDev(t, true) },
	}
	for name, mk := range devs {
		for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncNever} {
			t.Run(name+"/"+mode.String(), func(t *testing.T) {
				dev := mk()
				w, err := Create(dev, 1000, Options{SyncMode: mode, MaxWrite: 64 << 10, Preallocate: 256 << 10, PreZero: true})
				require.NoError(t, err)
				const appenders, perAppender = 8, 40
				var mu sync.Mutex
				firsts := map[uint64]int{}
				var wg sync.WaitGroup
				for a := 0; a < appenders; a++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for i := 0; i < perAppender; i++ {
							n := 1 + (a+i)%5
							// Content depends on the offset, which we only learn
							// after the append: write it, then check the mapping.
							recs := make([][]byte, n)
							for j := range recs {
								recs[j] = []byte{byte(a), byte(i), byte(j)}
							}
							first, err := w.Append(recs...)
							require.NoError(t, err)
							mu.Lock()
							firsts[first] = a<<16 | i<<8 | n
							mu.Unlock()
						}
					}()
				}
				wg.Wait()
				require.NoError(t, w.Close())
				assert.ErrorIs(t, w.Close(), ErrClosed)
				_, err = w.Append([]byte("late"))
				assert.ErrorIs(t, err, ErrClosed)

				got, rec := readAll(t, dev)
				assert.Nil(t, rec.Torn)
				assert.Equal(t, uint64(1000), rec.Header.BaseOffset)
				total := 0
				for first, v := range firsts {
					a, i, n := v>>16, (v>>8)&0xff, v&0xff
					for j := 0; j < n; j++ {
						assert.Equal(t, []byte{byte(a), byte(i), byte(j)}, got[first+uint64(j)], "offset %d", first+uint64(j))
					}
					total += n
				}
				assert.Len(t, got, total)
				assert.Equal(t, uint64(1000+total), rec.NextOffset)
				st := w.Stats()
				assert.Equal(t, int64(appenders*perAppender), st.Appends)
				assert.Positive(t, st.Syncs)
			})
		}
	}
}

func TestGroupCommitCoalesces(t *testing.T) {
	dev := blockdev.NewSim(blockdev.SimOptions{SyncLatency: 2 * time.Millisecond})
	w, err := Create(dev, 0, Options{})
	require.NoError(t, err)
	const appenders, each = 16, 10
	var wg sync.WaitGroup
	for a := 0; a < appenders; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				_, err := w.Append([]byte("x"))
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	require.NoError(t, w.Close())
	st := w.Stats()
	assert.Equal(t, int64(appenders*each), st.Appends)
	// While one 2ms sync runs, the other appenders queue up: far fewer
	// writes and syncs than appends.
	assert.Less(t, st.Writes, int64(appenders*each/3), "stats %+v", st)
	assert.LessOrEqual(t, st.Syncs, st.Writes+2, "one sync per flush (plus open and close)")
}

func TestReopenContinuesAfterPartialBlock(t *testing.T) {
	dev := newSim(2)
	w, err := Create(dev, 0, Options{MaxWrite: 64 << 10})
	require.NoError(t, err)
	next := uint64(0)
	for round := 0; round < 5; round++ {
		for i := 0; i < 7; i++ {
			first, err := w.Append(batch(next, 3)...)
			require.NoError(t, err)
			require.Equal(t, next, first)
			next += 3
		}
		require.NoError(t, w.Close())
		var rec *Recovery
		w, rec, err = Open(dev, Options{})
		require.NoError(t, err)
		require.Nil(t, rec.Torn)
		require.Equal(t, next, rec.NextOffset)
		require.Equal(t, next, w.NextOffset())
		pos, off := w.Durable()
		assert.Equal(t, rec.End, pos)
		assert.Equal(t, next, off)
	}
	require.NoError(t, w.Close())
	got, _ := readAll(t, dev)
	require.Len(t, got, int(next))
	for o := uint64(0); o < next; o++ {
		require.Equal(t, testutil.Record(o, recordSize(o)), got[o], "offset %d", o)
	}
}

func TestAppendLimits(t *testing.T) {
	w, err := Create(newSim(3), 0, Options{MaxWrite: 64 << 10})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Append()
	assert.ErrorIs(t, err, ErrEmptyBatch)
	_, err = w.Append(make([]byte, w.MaxBatchBytes()-RecordHeaderLen+1))
	assert.ErrorIs(t, err, ErrBatchTooLarge)
	assert.Contains(t, err.Error(), "split the batch")
	_, err = w.Append(make([]byte, w.MaxBatchBytes()-RecordHeaderLen))
	assert.NoError(t, err, "the advertised maximum must be accepted")
	assert.NoError(t, w.Err())
}

func TestCreateRefusesNonEmptyAndTinyMaxWrite(t *testing.T) {
	dev := newSim(4)
	w, err := Create(dev, 0, Options{})
	require.NoError(t, err)
	require.NoError(t, w.Close())
	_, err = Create(dev, 0, Options{})
	assert.ErrorContains(t, err, "not empty")
	_, err = Create(newSim(5), 0, Options{MaxWrite: 1024})
	assert.ErrorContains(t, err, "too small")
}

func TestTimestampsNeverGoBack(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { // a clock that jumps backwards
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(-time.Second)
		return now
	}
	dev := newSim(6)
	w, err := Create(dev, 0, Options{Now: clock})
	require.NoError(t, err)
	for i := 0; i < 5; i++ {
		_, err := w.Append([]byte{1})
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())
	s, err := NewScanner(dev)
	require.NoError(t, err)
	var last int64
	for s.Next() {
		assert.GreaterOrEqual(t, s.Frame().Time, last)
		last = s.Frame().Time
	}
	require.NoError(t, s.Err())
}

func TestSyncIntervalMakesRecordsDurableWithoutSync(t *testing.T) {
	dev := newSim(7)
	w, err := Create(dev, 0, Options{SyncMode: SyncInterval, SyncInterval: time.Millisecond})
	require.NoError(t, err)
	_, err = w.Append([]byte("a"), []byte("b"))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, off := w.Durable()
		return off == 2
	}, 5*time.Second, time.Millisecond, "the interval ticker must sync without a Sync call")
	img := dev.Crash(blockdev.CrashDropUnsynced)
	got, _ := readAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	assert.Equal(t, []byte("b"), got[1])
}

func TestSyncNeverSyncsOnlyWhenAskedOrWindowFull(t *testing.T) {
	dev := newSim(8)
	w, err := Create(dev, 0, Options{SyncMode: SyncNever, MaxWrite: 16 << 10})
	require.NoError(t, err)
	syncsAtStart := dev.Calls(blockdev.OpSync)
	_, err = w.Append([]byte("x"))
	require.NoError(t, err)
	require.Eventually(t, func() bool { pos, _ := w.Written(); return pos > DataStart }, 5*time.Second, time.Millisecond)
	assert.Equal(t, syncsAtStart, dev.Calls(blockdev.OpSync), "no sync without a reason")
	_, off := w.Durable()
	assert.Zero(t, off)

	// More than MaxWrite unsynced bytes force a sync: the torn-tail bound.
	for i := 0; i < 40; i++ {
		_, err = w.Append(make([]byte, 1000))
		require.NoError(t, err)
	}
	require.NoError(t, w.Sync())
	_, off = w.Durable()
	assert.Equal(t, uint64(41), off)
	assert.Greater(t, dev.Calls(blockdev.OpSync)-syncsAtStart, 1, "the window rule must have synced before the explicit Sync")
	require.NoError(t, w.Close())
}

// TestSyncsPerCreateAndAppend counts the fdatasyncs of making a file and
// of each durable append: a new file costs one (its header, with whatever
// was preallocated), a prepared one one more for Prepare, an open of an
// existing file one (what recovery read), and each lone SyncAlways append
// one. A segment roll pays Create's, so each one here is on the path of
// the appends that wait for the new segment.
func TestSyncsPerCreateAndAppend(t *testing.T) {
	opts := Options{MaxWrite: 64 << 10, Preallocate: 256 << 10}
	for _, tc := range []struct {
		name  string
		make  func(dev blockdev.Device) (*Writer, error)
		syncs int // fdatasyncs before the first append
	}{
		{"create", func(dev blockdev.Device) (*Writer, error) { return Create(dev, 7, opts) }, 1},
		{"create pre-zeroed", func(dev blockdev.Device) (*Writer, error) {
			o := opts
			o.PreZero = true
			return Create(dev, 7, o)
		}, 1},
		{"prepared", func(dev blockdev.Device) (*Writer, error) {
			if err := Prepare(dev, opts.Preallocate, true, nil); err != nil {
				return nil, err
			}
			return CreatePrepared(dev, 7, opts)
		}, 2},
		{"open", func(dev blockdev.Device) (*Writer, error) {
			w, err := Create(dev, 7, opts)
			if err != nil {
				return nil, err
			}
			if _, err := w.Append([]byte("before")); err != nil {
				return nil, err
			}
			if err := w.Close(); err != nil {
				return nil, err
			}
			w, _, err = Open(dev, opts)
			return w, err
		}, 3}, // Create's, the append's, Open's (Close finds nothing to sync)
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev := newSim(1)
			w, err := tc.make(dev)
			require.NoError(t, err)
			want := tc.syncs
			require.Equal(t, want, dev.Calls(blockdev.OpSync), "fdatasyncs before the first append")
			for i := range 5 {
				_, err := w.Append([]byte("record"))
				require.NoError(t, err)
				require.Equal(t, want+i+1, dev.Calls(blockdev.OpSync), "one fdatasync per lone append")
			}
			require.NoError(t, w.Close())
		})
	}
}

// TestWriteBuffersAreAllocatedAtTheFirstAppend: a writer opened and closed
// without an append (a log's clean open and close) allocates neither of its
// two MaxWrite buffers; the first append, which continues the partial last
// block, does, and what it writes follows the records before.
func TestWriteBuffersAreAllocatedAtTheFirstAppend(t *testing.T) {
	const maxWrite = 1 << 20
	dev := newSim(3)
	w, err := Create(dev, 0, Options{MaxWrite: maxWrite})
	require.NoError(t, err)
	_, err = w.Append(batch(0, 5)...)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	rec, err := Recover(dev)
	require.NoError(t, err)

	w2, err := Resume(dev, rec, Options{})
	require.NoError(t, err)
	assert.Less(t, len(w2.cur.b), maxWrite, "Resume allocated the current buffer")
	assert.Nil(t, w2.spare.b, "Resume allocated the spare buffer")
	_, err = w2.Append(batch(5, 5)...)
	require.NoError(t, err)
	assert.Len(t, w2.cur.b, maxWrite)
	assert.Len(t, w2.spare.b, maxWrite)
	require.NoError(t, w2.Close())
	got, _ := readAll(t, dev)
	require.Len(t, got, 10)
	for o := uint64(0); o < 10; o++ {
		require.Equal(t, testutil.Record(o, recordSize(o)), got[o], "offset %d", o)
	}
}

// TestWaitersSleepThroughOtherFrames: appenders waiting for a flush to end
// are not woken by the frames other appenders encode in the meantime (with
// 16 appenders those wake-ups cost more CPU than the appends). The first
// append's write is held at the device while 15 more appenders encode
// their frames and wait one by one; none of them wakes before the write is
// let go, and then all 16 records are durable.
func TestWaitersSleepThroughOtherFrames(t *testing.T) {
	dev := &gateDev{Sim: newSim(1), entered: make(chan int, 1), gates: map[int]chan struct{}{2: make(chan struct{})}}
	w, err := Create(dev, 0, Options{}) // write 1: the header
	require.NoError(t, err)
	var wg sync.WaitGroup
	appendOne := func() {
		defer wg.Done()
		_, err := w.Append(make([]byte, 100))
		assert.NoError(t, err)
	}
	wg.Add(1)
	go appendOne()
	require.Equal(t, 2, <-dev.entered, "the first append's write holds the device")
	sleepers := func() int {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.sleepers
	}
	const waiting = 15
	for i := 1; i <= waiting; i++ {
		wg.Add(1)
		go appendOne()
		for sleepers() < i {
			runtime.Gosched()
		}
	}
	w.mu.Lock()
	wakes := w.wakes
	w.mu.Unlock()
	close(dev.gates[2])
	wg.Wait()
	assert.Zero(t, wakes, "wake-ups of appenders waiting for the held write, while the others encoded")
	require.NoError(t, w.Close())
	recs, _ := readAll(t, dev.Sim)
	assert.Len(t, recs, waiting+1)
}

// TestBuffersAreLentToTheNextWriter: writers that share a Buffers, one
// after another (closed, or sealed), allocate two buffers between them,
// and each writer's records read back whole whatever the buffers held; a
// writer of another MaxWrite allocates its own; a writer that failed
// gives nothing back.
func TestBuffersAreLentToTheNextWriter(t *testing.T) {
	var bufs Buffers
	opts := Options{MaxWrite: 64 << 10, Buffers: &bufs}
	for i := range 6 {
		dev := newSim(uint64(i))
		w, err := Create(dev, 0, opts)
		require.NoError(t, err)
		for k := range 40 {
			_, err := w.Append(batch(uint64(k*3), 3)...)
			require.NoError(t, err)
		}
		if i%2 == 0 {
			require.NoError(t, w.Close())
		} else {
			_, err := w.Seal([]byte("footer"))
			require.NoError(t, err)
		}
		recs, _ := readAll(t, dev)
		require.Len(t, recs, 120, "writer %d", i)
		for off, r := range recs {
			require.Equal(t, testutil.Record(off, recordSize(off)), r, "writer %d offset %d", i, off)
		}
		require.Equal(t, int64(2), bufs.Allocs(), "after writer %d", i)
	}

	other := Options{MaxWrite: 128 << 10, Buffers: &bufs}
	w, err := Create(newSim(9), 0, other)
	require.NoError(t, err)
	_, err = w.Append(batch(0, 3)...)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	assert.Equal(t, int64(4), bufs.Allocs(), "buffers of another size are allocated")

	dev := newSim(10)
	w, err = Create(dev, 0, opts)
	require.NoError(t, err)
	dev.FailNth(blockdev.OpSync, dev.Calls(blockdev.OpSync)+1)
	_, err = w.Append(batch(0, 3)...)
	require.Error(t, err)
	require.Error(t, w.Close())
	w, err = Create(newSim(11), 0, opts)
	require.NoError(t, err)
	_, err = w.Append(batch(0, 3)...)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	assert.Equal(t, int64(6), bufs.Allocs(), "a failed writer's buffers are not lent again")
}
