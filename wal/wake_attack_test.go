package wal

import (
	"bytes"
	"errors"
	"fmt"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// wedgeBound is how long an attack may run before it counts as wedged: a
// goroutine waiting for a wake-up that never comes. It detects a hang; it
// is not a speed requirement (an attack takes well under a second).
const wedgeBound = 2 * time.Minute

// finishes runs f and fails the test, with every goroutine's stack, if f
// has not returned within wedgeBound.
func finishes(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(wedgeBound):
		var stacks bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&stacks, 2)
		t.Fatalf("wedged: not finished after %v; goroutines:\n%s", wedgeBound, stacks.String())
	}
}

// TestEveryWaiterIsWokenWhenItsConditionHolds drives many appenders of
// mixed sizes (up to MaxBatchBytes, and frames that fill a buffer
// exactly) in every sync mode, with Seal, Close, Sync callers or an
// injected write or sync failure racing them. Every call returns (no
// goroutine waits for ever), every error is one the situation explains,
// and every acknowledged record is in the file with its bytes (in
// SyncAlways, in what survives a crash).
func TestEveryWaiterIsWokenWhenItsConditionHolds(t *testing.T) {
	const maxWrite = 16 << 10
	type actor string
	const (
		none      actor = "none"
		seal      actor = "seal"
		closer    actor = "close"
		syncers   actor = "sync"
		failWrite actor = "failwrite"
		failSync  actor = "failsync"
	)
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncNever} {
		for _, appenders := range []int{1, 2, 7, 64} {
			for _, act := range []actor{none, seal, closer, syncers, failWrite, failSync} {
				for _, exact := range []bool{false, true} {
					name := fmt.Sprintf("%s/%d/%s/exact=%v", mode, appenders, act, exact)
					t.Run(name, func(t *testing.T) {
						finishes(t, func() {
							attackWakeups(t, mode, appenders, string(act), exact, maxWrite)
						})
					})
				}
			}
		}
	}
}

func attackWakeups(t *testing.T, mode SyncMode, appenders int, act string, exact bool, maxWrite int) {
	dev := blockdev.NewSim(blockdev.SimOptions{Name: "wake"})
	w, err := Create(dev, 0, Options{SyncMode: mode, MaxWrite: maxWrite, SyncInterval: time.Millisecond})
	require.NoError(t, err)
	hl := w.hdr.RecordHeaderLen()
	blk := int(w.blk)
	// Single-record frames of exactly these sizes: the largest frame, one
	// block, and two that fill the rest of a buffer after a block.
	exactFrames := []int{w.maxFrame, blk, int(w.maxWrite) - 2*blk, blk}
	recSize := func(frame int) int { return frame - FrameHeaderLen - hl }
	sizes := func(a, i int) []int {
		if exact {
			return []int{recSize(exactFrames[(a+i)%len(exactFrames)])}
		}
		switch (a + i) % 4 {
		case 0:
			return []int{1 + i%50}
		case 1:
			return []int{100, 200, 7, 0}
		case 2:
			return []int{w.MaxBatchBytes() - hl} // the largest batch
		default:
			return []int{blk, blk / 2}
		}
	}
	perAppender := max(4, 160/appenders)
	switch act {
	case "failwrite":
		dev.FailNth(blockdev.OpWrite, dev.Calls(blockdev.OpWrite)+3)
	case "failsync":
		dev.FailNth(blockdev.OpSync, dev.Calls(blockdev.OpSync)+3)
	}
	injected := act == "failwrite" || act == "failsync"

	var (
		mu    sync.Mutex
		acked = map[uint64][]byte{}
		acks  atomic.Int64
		stop  = make(chan struct{})
		wg    sync.WaitGroup
	)
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perAppender {
				sz := sizes(a, i)
				recs := make([][]byte, len(sz))
				for k, n := range sz {
					recs[k] = bytes.Repeat([]byte{byte(a), byte(i), byte(k)}, n/3+1)[:n]
				}
				first, err := w.Append(recs...)
				if err != nil {
					switch {
					case errors.Is(err, ErrClosed):
						assert.Contains(t, []string{"seal", "close"}, act, "ErrClosed without a Seal or Close: %v", err)
					case errors.Is(err, ErrFailed):
						assert.True(t, injected, "ErrFailed without an injected failure: %v", err)
					default:
						assert.NoError(t, err)
					}
					return
				}
				mu.Lock()
				for k, r := range recs {
					acked[first+uint64(k)] = r
				}
				mu.Unlock()
				acks.Add(1)
			}
		}()
	}
	var actors sync.WaitGroup
	switch act {
	case "seal", "close":
		actors.Add(1)
		go func() {
			defer actors.Done()
		wait:
			for acks.Load() < int64(appenders) {
				select {
				case <-stop:
					break wait
				case <-time.After(10 * time.Microsecond):
				}
			}
			if act == "seal" {
				_, err := w.Seal([]byte("footer"))
				assert.NoError(t, err)
			} else {
				assert.NoError(t, w.Close())
			}
		}()
	case "sync":
		for range 3 {
			actors.Add(1)
			go func() {
				defer actors.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					assert.NoError(t, w.Sync())
				}
			}()
		}
	}
	wg.Wait()
	close(stop)
	actors.Wait()

	err = w.Close()
	switch {
	case act == "seal" || act == "close":
		assert.ErrorIs(t, err, ErrClosed)
	case injected:
		assert.ErrorIs(t, err, ErrFailed, "the injected failure is reported")
	default:
		assert.NoError(t, err)
	}
	if injected {
		require.Error(t, w.Sync(), "a failed writer does not say it is durable")
	}
	if injected && mode != SyncAlways {
		return // acknowledged meant buffered: nothing to check in the file
	}
	img := dev.Crash(blockdev.CrashDropUnsynced)
	got, _ := readAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	mu.Lock()
	defer mu.Unlock()
	for off, want := range acked {
		rec, ok := got[off]
		require.True(t, ok, "acknowledged record %d is missing", off)
		require.True(t, bytes.Equal(want, rec), "acknowledged record %d: %d bytes, want %d", off, len(rec), len(want))
	}
}
