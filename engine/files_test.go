package engine

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	n := 0
	for _, fd := range fds {
		// The process-wide io_uring of concurrent direct reads (a ring and
		// its eventfd) is set up at the first read that overlaps another,
		// whenever that is: not a descriptor of any log.
		switch to, _ := os.Readlink("/proc/self/fd/" + fd.Name()); to {
		case "anon_inode:[io_uring]", "anon_inode:[eventfd]":
			continue
		}
		n++
	}
	return n
}

// liveHeap is the heap in use after a full collection.
func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// sizedRecord is record off of the file tests: its offset, then filler.
func sizedRecord(off uint64, n int) []byte {
	return testutil.Labelled(fmt.Sprintf("record-%08d|", off), byte(off), n)
}

// fileOptions: small segments, rolled by hand, a tiny cache and bound.
func fileOptions() Options {
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.CacheBytes, o.Logger = 128<<10, 32<<10, 64<<10, quiet
	o.NoPreallocate, o.MaxOpenSegments = true, 8
	return o
}

// TestMemoryAndFilesBounded: heap and open descriptors do not grow with
// the number of segments. Each segment gets three
// appends, each followed by a read of the newest record (raft's GetLog of
// what it just stored), then a roll; then every segment is read once
// (lazily loaded, or loaded again after the bound closed it). At N and 4N
// segments, and after reopening with and without the manifest, read-write
// and read-only, the open
// descriptors are the bound plus a constant, and 3N more segments hold
// less than 1 MiB more heap (each used to keep its last interval, here
// 24 KiB, and its file).
func TestMemoryAndFilesBounded(t *testing.T) {
	const n, recSize = 100, 8 << 10
	path := t.TempDir()
	opts := fileOptions()
	fds0 := openFDs(t)
	l, err := Open(path, opts)
	require.NoError(t, err)
	defer func() { l.Close() }()
	// The log's own descriptors: LOCK, DURABLE, the active segment (and
	// slack for the runtime's).
	const constant = 3 + 2
	readAll := func(t *testing.T) {
		t.Helper()
		for _, si := range l.Segments() {
			if si.Next > si.Base {
				got, err := l.Read(si.Base, nil)
				require.NoError(t, err)
				require.Equal(t, sizedRecord(si.Base, recSize), got)
			}
		}
	}
	grow := func(t *testing.T, segments int) {
		t.Helper()
		for len(l.Segments()) <= segments {
			for range 3 {
				off, err := l.Append(sizedRecord(l.EndOffset(), recSize))
				require.NoError(t, err)
				got, err := l.Read(off, nil)
				require.NoError(t, err)
				require.Equal(t, sizedRecord(off, recSize), got)
			}
			require.NoError(t, l.Roll())
		}
		readAll(t)
	}
	grow(t, n)
	heapN, fdsN := liveHeap(), openFDs(t)
	assert.LessOrEqual(t, fdsN-fds0, opts.MaxOpenSegments+constant, "open files at %d segments", n)
	grow(t, 4*n)
	heap4N, fds4N := liveHeap(), openFDs(t)
	t.Logf("%d segments: heap %d KiB, %d descriptors; %d segments: heap %d KiB, %d descriptors",
		n, heapN>>10, fdsN-fds0, 4*n, heap4N>>10, fds4N-fds0)
	assert.LessOrEqual(t, fds4N-fds0, opts.MaxOpenSegments+constant, "open files at %d segments", 4*n)
	assert.Less(t, heap4N-heapN, int64(1<<20), "heap grew by %d bytes for %d more segments", heap4N-heapN, 3*n)
	assert.Positive(t, l.files.unloads.Load())

	// Trusting the manifest, or reading every footer; read-write or not.
	for _, o := range []struct{ verify, readOnly bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		require.NoError(t, l.Close())
		oo := opts
		oo.VerifyOnOpen, oo.ReadOnly = o.verify, o.readOnly
		l, err = Open(path, oo)
		require.NoError(t, err)
		assert.LessOrEqual(t, openFDs(t)-fds0, opts.MaxOpenSegments+constant, "open files after opening (%+v)", o)
		readAll(t)
		assert.LessOrEqual(t, openFDs(t)-fds0, opts.MaxOpenSegments+constant, "open files after reading (%+v)", o)
	}
}

// TestReadersRaceFileEviction: with room for two open sealed segments,
// point readers, iterators, views (export, mapping), SeekTime and a
// read-only log refreshed beside the writer, over 30 segments, race each
// other's loads, the bound closing files, and a writer rolling new
// segments and truncating back into sealed ones after them (a rewrite
// under a sealed segment's name) while a reader reads there too; no reader
// ever sees an error (but out of range where truncated) or a wrong byte,
// and files were closed under them all along.
func TestReadersRaceFileEviction(t *testing.T) {
	const recSize, sealed = 1000, 30
	path := t.TempDir()
	opts := fileOptions()
	opts.MaxOpenSegments = 2
	l, err := Open(path, opts)
	require.NoError(t, err)
	defer l.Close()
	appendSome := func(k int) {
		for range k {
			batch := make([][]byte, 4)
			for i := range batch {
				batch[i] = sizedRecord(l.EndOffset()+uint64(i), recSize)
			}
			_, err := l.Append(batch...)
			require.NoError(t, err)
		}
	}
	for len(l.Segments()) <= sealed {
		appendSome(10)
		require.NoError(t, l.Roll())
	}
	segs := l.Segments()
	files := make(map[uint64][]byte)
	for _, si := range segs[:sealed] {
		b, err := os.ReadFile(filepath.Join(path, si.File))
		require.NoError(t, err)
		files[si.Base] = b
	}
	end := segs[sealed-1].Next // the sealed records
	before := l.files.unloads.Load()

	var wg sync.WaitGroup
	errs := make(chan error, 64)
	run := func(f func(rng *rand.Rand) error) {
		wg.Add(1)
		seed := uint64(len(errs) + 1)
		go func() {
			defer wg.Done()
			if err := f(rand.New(rand.NewPCG(seed, uint64(time.Now().UnixNano())))); err != nil {
				errs <- err
			}
		}()
	}
	for range 3 {
		run(func(rng *rand.Rand) error { // point reads
			for range 600 {
				off := rng.Uint64N(end)
				got, err := l.Read(off, nil)
				if err != nil {
					return fmt.Errorf("read %d: %w", off, err)
				}
				if !bytes.Equal(got, sizedRecord(off, recSize)) {
					return fmt.Errorf("read %d: wrong bytes %q", off, got[:20])
				}
			}
			return nil
		})
	}
	run(func(rng *rand.Rand) error { // iterators over a few segments each
		for range 20 {
			from := rng.Uint64N(end)
			it := l.NewIterator(from)
			for want := from; want < min(from+200, end) && it.Next(); want++ {
				if it.Offset() != want || !bytes.Equal(it.Record(), sizedRecord(want, recSize)) {
					it.Close()
					return fmt.Errorf("iterator from %d: record %d at %d is wrong", from, it.Offset(), want)
				}
			}
			if err := it.Err(); err != nil {
				return fmt.Errorf("iterator from %d: %w", from, err)
			}
			it.Close()
		}
		return nil
	})
	run(func(rng *rand.Rand) error { // views: ReadAt, export, mapping
		for range 60 {
			si := segs[rng.IntN(sealed)]
			v, err := l.OpenSegment(si.Base)
			if err != nil {
				return fmt.Errorf("open segment %d: %w", si.Base, err)
			}
			var got bytes.Buffer
			_, err = v.WriteTo(&got)
			if err == nil && !bytes.Equal(got.Bytes(), files[si.Base]) {
				err = fmt.Errorf("export of segment %d differs from its file", si.Base)
			}
			var m *Mapping
			if err == nil {
				m, err = v.Mmap()
			}
			if err == nil {
				it, want := m.NewIterator(), si.Base
				for ; it.Next(); want++ {
					if it.Offset() != want || !bytes.Equal(it.Record(), sizedRecord(want, recSize)) {
						err = fmt.Errorf("mapping of segment %d: record %d is wrong", si.Base, want)
						break
					}
				}
				if err == nil && (it.Err() != nil || want != si.Next) {
					err = fmt.Errorf("mapping of segment %d ended at %d: %v", si.Base, want, it.Err())
				}
				m.Close()
			}
			v.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	run(func(rng *rand.Rand) error { // SeekTime to each segment's first record
		for range 60 {
			si := segs[rng.IntN(sealed)]
			off, err := l.SeekTime(si.FirstTime)
			if err != nil {
				return fmt.Errorf("seek to segment %d's time: %w", si.Base, err)
			}
			if off > si.Base {
				return fmt.Errorf("seek to segment %d's first time gave %d", si.Base, off)
			}
		}
		return nil
	})
	run(func(rng *rand.Rand) error { // reads past the sealed range, where the writer truncates
		for range 600 {
			d := l.DurableOffset()
			if d <= end {
				continue
			}
			off := end + rng.Uint64N(d-end)
			got, err := l.Read(off, nil)
			if errors.Is(err, ErrOutOfRange) {
				continue // truncated meanwhile
			}
			if err != nil {
				return fmt.Errorf("read %d past the sealed range: %w", off, err)
			}
			if !bytes.Equal(got, sizedRecord(off, recSize)) { // records depend only on their offset
				return fmt.Errorf("read %d past the sealed range: wrong bytes %q", off, got[:20])
			}
		}
		return nil
	})
	ro := opts
	ro.ReadOnly = true
	run(func(rng *rand.Rand) error { // a read-only log beside the writer
		r, err := Open(path, ro)
		if err != nil {
			return err
		}
		defer func() {
			if r != nil {
				r.Close()
			}
		}()
		for range 100 {
			if _, err := r.Refresh(); errors.Is(err, ErrRewritten) {
				r.Close() // the writer truncated back: reopen, as documented
				// The open races the truncations themselves (files removed,
				// a rewrite renamed into place): it must still succeed.
				if r, err = Open(path, ro); err != nil {
					return fmt.Errorf("reopen after the writer truncated back: %w", err)
				}
			} else if err != nil {
				return fmt.Errorf("refresh: %w", err)
			}
			for range 5 {
				off := rng.Uint64N(end)
				got, err := r.Read(off, nil)
				if err != nil {
					return fmt.Errorf("read-only read %d: %w", off, err)
				}
				if !bytes.Equal(got, sizedRecord(off, recSize)) {
					return fmt.Errorf("read-only read %d: wrong bytes %q", off, got[:20])
				}
			}
		}
		return nil
	})
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 12 { // the writer: each roll notes a newly sealed segment
		appendSome(5)
		require.NoError(t, l.Roll())
		if i%3 == 2 { // into a sealed segment after the readers' range, or the active one
			require.NoError(t, l.TruncateBack(end+1+rng.Uint64N(l.EndOffset()-end-1)))
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	assert.Greater(t, l.files.unloads.Load()-before, int64(50), "files were closed while readers raced")
}

// TestRetentionCountsWrittenBytes: byte retention counts what the active
// segment holds, not its preallocated file. Segments of equal records are
// sealed by hand; after each roll the log keeps as many sealed segments as
// fit beside the fresh active one's written bytes (counting its
// preallocated file as full kept one fewer).
func TestRetentionCountsWrittenBytes(t *testing.T) {
	o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
	o.NoPreallocate = false
	o.RetentionBytes = o.SegmentSize * 5 / 2
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	for roll := 0; roll < 6; roll++ {
		for range 80 { // ~84 KiB: below the size that rolls by itself
			_, err := l.Append(make([]byte, 1000))
			require.NoError(t, err)
		}
		require.NoError(t, l.Roll())
		segs := l.Segments()
		active := segs[len(segs)-1]
		require.Equal(t, active.Base, active.Next, "rolled by hand only")
		require.Equal(t, o.SegmentSize, active.Bytes, "the active file is preallocated")
		sealed := segs[0].Bytes
		fit := int((o.RetentionBytes - active.DataEnd) / sealed)
		assert.Len(t, segs, min(roll+1, fit)+1, "after roll %d: as many %d-byte sealed segments as fit in %d bytes beside %d written",
			roll, sealed, o.RetentionBytes, active.DataEnd)
	}
}
