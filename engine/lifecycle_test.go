package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// A writer opened with a real directory as Options.Dir holds the
// directory's lock like one opened by name: a second writer, by name or
// through the same Options.Dir, is refused with ErrLocked, and a reader
// finds the lock held (so it shows only what the writer made durable).
func TestOptionsDirWriterHoldsTheLock(t *testing.T) {
	path := t.TempDir()
	d, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	o := DefaultOptions()
	o.SegmentSize, o.Logger, o.Dir, o.SyncMode = 256<<10, quiet, d, SyncNever
	l1, err := Open(path, o)
	require.NoError(t, err)
	defer l1.Close()
	for i := range 200 {
		_, err = l1.Append(modelRec(i))
		require.NoError(t, err)
	}

	held, _, err := d.LockHolder(lockName)
	require.NoError(t, err)
	assert.True(t, held, "the writer holds LOCK")

	byName := o
	byName.Dir = nil
	for name, o2 := range map[string]Options{"by name": byName, "same Options.Dir": o} {
		l2, err := Open(path, o2)
		if err == nil {
			l2.Close()
		}
		assert.ErrorIs(t, err, blockdev.ErrLocked, "a second writer (%s) is refused", name)
	}

	ro := DefaultOptions()
	ro.ReadOnly, ro.Logger = true, quiet
	r, err := Open(path, ro)
	require.NoError(t, err)
	defer r.Close()
	assert.LessOrEqual(t, r.DurableOffset(), l1.DurableOffset(), "a reader beside the writer shows no more than it made durable")

	require.NoError(t, l1.Close())
	l3, err := Open(path, o)
	require.NoError(t, err, "the lock goes with the writer that closed")
	require.NoError(t, l3.Close())
}

// Reads may run while the log closes: each returns its record, exact, or
// ErrClosed; none panics (Close closes the log's own cache while reads
// that passed the closed check still Get and Set in it). Readers start
// before Close and keep reading after it, so every run has reads before,
// during and after; go test -race checks them against Close.
func TestReadDuringCloseReturnsRecordOrErrClosed(t *testing.T) {
	for try := range 30 {
		o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
		o.MaxOpenSegments = 1 // reads also load and unload sealed segments
		l, err := Open("sim", o)
		require.NoError(t, err)
		for i := 0; len(l.Segments()) < 3; i++ {
			_, err := l.Append(modelRec(i))
			require.NoError(t, err)
		}
		n := l.EndOffset()
		var wg sync.WaitGroup
		var mu sync.Mutex
		var bad []string
		started := make(chan struct{}, 4)
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					if r := recover(); r != nil {
						mu.Lock()
						bad = append(bad, fmt.Sprintf("panic: %v", r))
						mu.Unlock()
					}
				}()
				started <- struct{}{}
				for off := uint64(g); ; off = (off + 37) % n {
					got, err := l.Read(off, nil)
					if errors.Is(err, ErrClosed) {
						return
					}
					if err != nil || !bytes.Equal(got, modelRec(int(off))) {
						mu.Lock()
						bad = append(bad, fmt.Sprintf("read %d: %d bytes, %v", off, len(got), err))
						mu.Unlock()
						return
					}
				}
			}()
		}
		for range 4 {
			<-started
		}
		require.NoError(t, l.Close())
		wg.Wait()
		assert.Empty(t, bad, "try %d: every read during Close returns its record or ErrClosed", try)
	}
}

// writerFlushers counts the goroutines running a wal writer's background
// flush. Writer.Close waits for its flusher to return, so the count is
// exact as soon as the writer is closed.
func writerFlushers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "wal.(*Writer).flushInBackground(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// flushersAtMost waits for the count of wal flusher goroutines to drop to
// want and returns the count: a closed writer's flusher has signalled Close
// but may still be on its way out of the function when the stacks are read.
// A flusher that was not stopped never leaves, and the count stays above
// want (the wait gives up after a minute and reports it).
func flushersAtMost(want int) int {
	for range 6000 {
		if n := writerFlushers(); n <= want {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
	return writerFlushers()
}

// A failed Open stops every writer it started: the directory stops
// accepting changes after each step in turn of a first open (creating the
// active segment, its spare, the manifest, ...) and of a reopen of a log
// with two segments, in each mode with a background flush and with and
// without preallocation, until Open succeeds; after each failure no wal
// writer's flusher is left running, and the log reopens with every record.
func TestFailedOpenStopsItsWriters(t *testing.T) {
	for _, mode := range []SyncMode{SyncInterval, SyncNever} {
		for _, prealloc := range []bool{false, true} {
			for _, reopen := range []bool{false, true} {
				name := fmt.Sprintf("mode %d, preallocate %v, reopen %v", mode, prealloc, reopen)
				t.Run(name, func(t *testing.T) {
					failures := 0
					for n := 0; ; n++ {
						d := blockdev.NewSimDir(blockdev.SimOptions{})
						o := testOptions(d)
						o.SyncMode, o.NoPreallocate = mode, !prealloc
						records := 0
						if reopen {
							l, err := Open("sim", o)
							require.NoError(t, err)
							for ; len(l.Segments()) < 2; records++ {
								_, err := l.Append(modelRec(records))
								require.NoError(t, err)
							}
							require.NoError(t, l.Sync())
							require.NoError(t, l.Close())
						}
						before := flushersAtMost(0)
						d.StopAfter(n)
						l, err := Open("sim", o)
						if err == nil {
							d.StopAfter(-1) // Close writes the manifest
							require.NoError(t, l.Close())
							require.Positive(t, failures, "Open failed at no step")
							return
						}
						failures++
						require.Equal(t, before, flushersAtMost(before), "StopAfter(%d): Open failed (%v) and left a writer running", n, err)
						d.StopAfter(-1)
						l, err = Open("sim", o)
						require.NoError(t, err, "StopAfter(%d): the log opens once the directory works", n)
						requireRecords(t, l, records)
						require.NoError(t, l.Close())
						require.Less(t, n, 1000, "Open keeps failing")
					}
				})
			}
		}
	}
}

// A FIFO (or another special file) named DURABLE or LOCK never makes an
// open wait: a read-only Open and Verify return (a FIFO DURABLE is
// ignored; a LOCK that is not a regular file cannot be queried and counts
// as held by a writer), and a writer's Open is refused with
// blockdev.ErrNotRegular, naming the file and saying to remove it.
func TestSpecialDurableOrLockNeverBlocksAnOpen(t *testing.T) {
	for _, name := range []string{durableName, lockName} {
		t.Run(name, func(t *testing.T) {
			path := t.TempDir()
			o := DefaultOptions()
			o.SegmentSize, o.Logger = 256<<10, quiet
			w, err := Open(path, o)
			require.NoError(t, err)
			_, err = w.Append([]byte("x"))
			require.NoError(t, err)
			require.NoError(t, w.Close())
			fifo := filepath.Join(path, name)
			require.NoError(t, os.Remove(fifo))
			mkfifo(t, fifo)

			done := make(chan string, 3)
			go func() {
				ro := o
				ro.ReadOnly = true
				l, err := Open(path, ro)
				if err != nil {
					done <- fmt.Sprintf("read-only open: %v", err)
					return
				}
				got, err := l.Read(0, nil)
				l.Close()
				if err != nil || string(got) != "x" {
					done <- fmt.Sprintf("read-only read: %q, %v", got, err)
					return
				}
				done <- ""
			}()
			go func() {
				rep, err := Verify(path, VerifyOptions{})
				if err != nil || len(rep.Problems) > 0 {
					done <- fmt.Sprintf("verify: %v, %+v", err, rep.Problems)
					return
				}
				done <- ""
			}()
			wait := func(n int) {
				// A hang guard only: each open returns at once when it works.
				guard := time.After(30 * time.Second)
				for range n {
					select {
					case msg := <-done:
						assert.Empty(t, msg)
					case <-guard:
						if f, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
							f.Close() // let the stuck open return so the test can end
						}
						t.Fatalf("an open of a store whose %s is a FIFO still waits", name)
					}
				}
			}
			wait(2)
			go func() { // the writer after the readers: they would see it live
				l, err := Open(path, o)
				switch {
				case name == durableName && err == nil:
					l.Close()
					done <- ""
				case name == lockName && errors.Is(err, blockdev.ErrNotRegular):
					done <- ""
				default:
					if err == nil {
						l.Close()
					}
					done <- fmt.Sprintf("writer's open: %v", err)
				}
			}()
			wait(1)
		})
	}
}
