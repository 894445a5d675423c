package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
)

func testOptions(dir blockdev.Dir) Options {
	o := DefaultOptions()
	o.Dir, o.SegmentSize, o.MaxWrite, o.CacheBytes, o.IndexInterval, o.Logger = dir, 128<<10, 32<<10, 1<<20, 4096, quiet
	return o
}

func appendN(t *testing.T, l *Log, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		_, err := l.Append([]byte(fmt.Sprintf("record-%06d", l.EndOffset())))
		require.NoError(t, err)
	}
}

func TestRealDirectoryRollReopen(t *testing.T) {
	path := t.TempDir()
	opts := DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.Logger = 256<<10, 64<<10, quiet
	l, err := Open(path, opts)
	require.NoError(t, err)
	for i := 0; i < 3000; i++ {
		_, err := l.Append([]byte(fmt.Sprintf("record-%06d-%s", i, make([]byte, 100))))
		require.NoError(t, err)
	}
	segs := l.Segments()
	require.Greater(t, len(segs), 1, "3000 records of ~116 B must roll 256 KiB segments")
	for _, s := range segs[:len(segs)-1] {
		assert.True(t, s.Sealed)
	}
	_, err = Open(path, opts)
	assert.ErrorIs(t, err, blockdev.ErrLocked, "a second writer is refused")
	require.NoError(t, l.Close())

	l, err = Open(path, opts)
	require.NoError(t, err)
	defer l.Close()
	rec := l.Stats().LastOpenRecovery
	assert.Equal(t, len(segs), rec.Segments)
	assert.Equal(t, len(segs)-1, rec.Deferred, "sealed segments are trusted through the manifest, their files not opened")
	assert.Zero(t, rec.Sealed)
	assert.Nil(t, rec.Torn)
	for _, off := range []uint64{0, 1, 1234, 2999} {
		got, err := l.Read(off, nil)
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("record-%06d-%s", off, make([]byte, 100)), string(got))
	}
	st := l.Stats()
	assert.Equal(t, uint64(3000), st.EndOffset)
	assert.Positive(t, st.Cache.Hits+st.Cache.Misses)
}

func TestBadInput(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	appendN(t, l, 10)

	_, err = l.Read(10, nil)
	assert.ErrorIs(t, err, ErrOutOfRange)
	assert.ErrorContains(t, err, "durable end 10")
	_, err = l.Append()
	assert.Error(t, err, "an empty batch is refused")
	_, err = l.Append(make([]byte, 40<<10))
	assert.ErrorIs(t, err, ErrBatchTooLarge)
	assert.Equal(t, uint64(10), l.EndOffset(), "nothing was written")

	require.NoError(t, l.Close())
	_, err = l.Append([]byte("x"))
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, l.Sync(), ErrClosed)
	assert.ErrorIs(t, l.Close(), ErrClosed)

	opts := testOptions(dir)
	opts.ReadOnly = true
	ro, err := Open("sim", opts)
	require.NoError(t, err)
	_, err = ro.Append([]byte("x"))
	assert.ErrorIs(t, err, ErrReadOnly)
	assert.ErrorIs(t, ro.Roll(), ErrReadOnly)
	got, err := ro.Read(9, nil)
	require.NoError(t, err)
	assert.Equal(t, "record-000009", string(got))
	require.NoError(t, ro.Close())
	_, err = Open("sim", Options{Dir: dir, SegmentSize: 1024})
	assert.ErrorContains(t, err, "Options.SegmentSize 1 KiB is too small: use at least 64 KiB")
}

func TestMissingMiddleSegmentIsAnError(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		appendN(t, l, 5)
		require.NoError(t, l.Roll())
	}
	require.NoError(t, l.Close())
	require.NoError(t, dir.Remove(segName(5)))

	_, err = Open("sim", testOptions(dir))
	var ce *CorruptionError
	require.ErrorAs(t, err, &ce)
	assert.ErrorIs(t, err, ErrCorrupt)
	assert.Equal(t, uint64(10), ce.Segment)
	assert.ErrorContains(t, err, "ends at offset 5 but the next file starts at 10")
}

func TestWaitForDurability(t *testing.T) {
	l, err := Open("sim", testOptions(blockdev.NewSimDir(blockdev.SimOptions{})))
	require.NoError(t, err)
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	assert.ErrorIs(t, l.Wait(ctx, 0), context.DeadlineExceeded, "nothing appended yet")

	done := make(chan error)
	go func() { done <- l.Wait(context.Background(), 4) }()
	appendN(t, l, 5)
	select {
	case err := <-done:
		assert.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return after the offset became durable")
	}
}

func TestSharedCacheAcrossLogs(t *testing.T) {
	c, err := cache.New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	var logs []*Log
	for i := 0; i < 2; i++ {
		o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
		o.Cache = c
		l, err := Open(fmt.Sprint("sim", i), o)
		require.NoError(t, err)
		appendN(t, l, 20)
		require.NoError(t, l.Roll())
		// Reopened, so that reads go through the cache, not the batches
		// just appended.
		require.NoError(t, l.Close())
		l, err = Open(fmt.Sprint("sim", i), o)
		require.NoError(t, err)
		logs = append(logs, l)
	}
	for _, l := range logs {
		for i := 0; i < 3; i++ {
			got, err := l.Read(7, nil)
			require.NoError(t, err)
			assert.Equal(t, "record-000007", string(got), "each log reads its own data through one cache")
			c.Wait() // Set is asynchronous
		}
	}
	st := c.Stats()
	// Less the lookups of the sealed segments' index blocks (one block per
	// log: a miss, then hits, most of them through the log's own hints),
	// which go through the cache too.
	var indexHits, indexMisses int64
	for _, l := range logs {
		indexHits += l.indexHits.Load()
		indexMisses += l.indexMisses.Load()
	}
	assert.Equal(t, int64(2), indexMisses, "one index block per log")
	assert.Equal(t, int64(2), st.Misses-indexMisses, "one miss per log")
	assert.Equal(t, int64(4), st.Hits-indexHits)
	for _, l := range logs {
		require.NoError(t, l.Close())
	}
	after := c.Stats()
	assert.Equal(t, [4]int64{st.Hits, st.Misses, st.Added, st.Bytes}, [4]int64{after.Hits, after.Misses, after.Added, after.Bytes},
		"closing a log leaves a shared cache's entries alone")
}

func TestIteratorTailsTheActiveSegment(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	opts := DefaultOptions()
	opts.Logger = quiet
	l, err := Open(path, opts)
	require.NoError(t, err)
	defer l.Close()
	appendN(t, l, 3)
	it := l.NewIterator(0)
	var got []uint64
	for it.Next() {
		got = append(got, it.Offset())
	}
	require.NoError(t, it.Err())
	appendN(t, l, 2)
	for it.Next() {
		got = append(got, it.Offset())
	}
	require.NoError(t, it.Err())
	assert.Equal(t, []uint64{0, 1, 2, 3, 4}, got, "a caught-up iterator continues with new durable records")
}

// TestFailedRollIsStickyAndRecoverable: an fdatasync failure while a roll
// seals the segment stops all changes with an error saying to reopen;
// reads go on; the reopened log holds every acknowledged record.
func TestFailedRollIsStickyAndRecoverable(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	appendN(t, l, 20)
	active := dir.File(segName(0))
	active.FailNth(blockdev.OpSync, active.Calls(blockdev.OpSync)+1)

	err = l.Roll()
	require.Error(t, err)
	assert.ErrorContains(t, err, "reopen it to recover")
	_, err = l.Append([]byte("x"))
	assert.ErrorContains(t, err, "reopen it to recover", "sticky")
	assert.ErrorContains(t, l.TruncateBack(5), "reopen it to recover")
	got, err := l.Read(19, nil)
	require.NoError(t, err, "reads go on")
	assert.Equal(t, "record-000019", string(got))
	l.Close()

	l, err = Open("sim", testOptions(dir))
	require.NoError(t, err)
	defer l.Close()
	assert.Equal(t, uint64(20), l.EndOffset())
	appendN(t, l, 1)
}

// TestReadersDuringTruncateBack: readers and iterators working while the
// tail is truncated and re-appended never see an error or a wrong byte
// (every offset's content is the same before and after: "record-<offset>").
func TestReadersDuringTruncateBack(t *testing.T) {
	l, err := Open("sim", testOptions(blockdev.NewSimDir(blockdev.SimOptions{})))
	require.NoError(t, err)
	defer l.Close()
	appendN(t, l, 300)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 3; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if r == 0 { // an iterator over the stable prefix and beyond
					it := l.NewIterator(0)
					for it.Next() {
						if string(it.Record()) != fmt.Sprintf("record-%06d", it.Offset()) {
							t.Errorf("iterator: offset %d holds %q", it.Offset(), it.Record())
						}
					}
					if it.Err() != nil {
						t.Errorf("iterator: %v", it.Err())
					}
					it.Close()
					continue
				}
				off := uint64(i % 100)
				got, err := l.Read(off, nil)
				if err != nil || string(got) != fmt.Sprintf("record-%06d", off) {
					t.Errorf("read %d: %q, %v", off, got, err)
				}
			}
		}()
	}
	for i := 0; i < 30; i++ {
		require.NoError(t, l.TruncateBack(100+uint64(i*7)%200))
		appendN(t, l, 50)
	}
	close(stop)
	wg.Wait()
}

// TestIteratorReadAheadOverLargeSegments: segments larger than the
// read-ahead make the iterator read ahead in the background (and cross
// segments) while another goroutine appends; every record comes back in
// order with its bytes.
func TestIteratorReadAheadOverLargeSegments(t *testing.T) {
	o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
	o.SegmentSize, o.MaxWrite = 4<<20, 256<<10
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	rec := func(off uint64) []byte { return []byte(fmt.Sprintf("%08d-%0900d", off, off)) }
	appendRecs := func(n int) {
		for i := 0; i < n; i++ {
			batch := make([][]byte, 16)
			for j := range batch {
				batch[j] = rec(l.EndOffset() + uint64(j))
			}
			_, err := l.Append(batch...)
			require.NoError(t, err)
		}
	}
	appendRecs(600) // ~8.6 MB: three segments, each several read-aheads long
	require.Greater(t, len(l.Segments()), 2)

	done := make(chan struct{})
	go func() { defer close(done); appendRecs(100) }() // the log grows meanwhile
	for _, from := range []uint64{0, 3333} {
		it := l.NewIterator(from)
		next := from
		for it.Next() {
			require.Equal(t, next, it.Offset())
			require.Equal(t, rec(next), it.Record())
			next++
		}
		require.NoError(t, it.Err())
		require.GreaterOrEqual(t, next, uint64(9600))
		require.NoError(t, it.Close())
	}
	<-done
}

// TestRetentionByAge: after a roll, sealed segments whose last record is
// older than RetentionAge are deleted; the active one never is.
func TestRetentionByAge(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	var mu sync.Mutex
	o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
	o.RetentionAge = time.Hour
	o.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	for i := 0; i < 3; i++ { // three sealed segments, 30 minutes apart
		appendN(t, l, 10)
		require.NoError(t, l.Roll())
		advance(30 * time.Minute)
	}
	// Now: segment 0 sealed 90 min ago, 1 sealed 60 min ago, 2 sealed 30.
	appendN(t, l, 10)
	advance(time.Minute)
	require.NoError(t, l.Roll())
	assert.Equal(t, uint64(20), l.StartOffset(), "segments sealed more than an hour ago are gone")
	_, err = l.Read(19, nil)
	assert.ErrorIs(t, err, ErrOutOfRange)
	got, err := l.Read(20, nil)
	require.NoError(t, err)
	assert.Equal(t, "record-000020", string(got))
}

// TestCloseRemovesTheSpare: the next segment's file, prepared in the
// background, does not outlive Close.
func TestCloseRemovesTheSpare(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	appendN(t, l, 4000) // rolls, and past half of the next segment
	for l.EndOffset()%1000 != 0 || !hasSpare(l) {
		appendN(t, l, 1) // until a spare is being prepared
	}
	<-l.spare.done
	names, err := dir.List()
	require.NoError(t, err)
	require.Contains(t, names, spareName, "the test needs a prepared spare")
	require.NoError(t, l.Close())
	names, err = dir.List()
	require.NoError(t, err)
	assert.NotContains(t, names, spareName)
}

func hasSpare(l *Log) bool {
	l.spareMu.Lock()
	defer l.spareMu.Unlock()
	return l.spare != nil
}

// TestReadOnlyOpenCreatesNothing: tools open stores read-only; a wrong path
// is an error that says so, not a new empty store.
func TestReadOnlyOpenCreatesNothing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-such-store")
	o := DefaultOptions()
	o.ReadOnly = true
	_, err := Open(missing, o)
	require.ErrorContains(t, err, "not an existing directory")
	assert.ErrorIs(t, err, os.ErrNotExist)
	_, statErr := os.Stat(missing)
	assert.True(t, os.IsNotExist(statErr), "nothing was created")
}

// TestCorruptionErrorsNameThePath: damage found while reading names the
// segment's file by its full path and says the bytes were not returned.
func TestCorruptionErrorsNameThePath(t *testing.T) {
	path := t.TempDir()
	o := DefaultOptions()
	o.Logger = quiet
	l, err := Open(path, o)
	require.NoError(t, err)
	appendN(t, l, 10)
	require.NoError(t, l.Roll())
	require.NoError(t, l.Close())
	f, err := os.OpenFile(filepath.Join(path, segName(0)), os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0xff}, 4096+40) // inside the first frame's payload
	require.NoError(t, err)
	require.NoError(t, f.Close())

	o.ReadOnly = true
	l, err = Open(path, o) // the footer is intact: open trusts it
	require.NoError(t, err)
	defer l.Close()
	_, err = l.Read(0, nil)
	var ce *CorruptionError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, filepath.Join(path, segName(0)), ce.File)
	assert.Contains(t, err.Error(), "no damaged bytes were returned")
}
