package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

func TestLogStateString(t *testing.T) {
	cases := []struct {
		s    logState
		want string
	}{
		{stateWritable, "writable"},
		{stateReadOnly, "read-only"},
		{stateFailed, "failed"},
		{stateClosed, "closed"},
		{0, "logState(0)"},
		{9, "logState(9)"},
	}
	for _, tc := range cases {
		assert.Equal(t, tc.want, tc.s.String())
	}
}

// TestStateLifecycle walks each way through the states and checks, in
// each, the state and what the calls return: a failed write leaves Append
// and Sync returning the writer's sticky error (wal.ErrFailed, not the
// log's ErrFailed) until a roll meets it and records it as the log's
// failure; a change stopped halfway fails every change with ErrFailed; a
// read-only log refuses changes with ErrReadOnly; Close ends every path in
// closed.
func TestStateLifecycle(t *testing.T) {
	type step struct {
		do   func(t *testing.T, l *Log, dir *blockdev.SimDir) error
		want logState
		is   error // the error do must match (nil: none)
		not  error // an error it must not match
	}
	failNextSync := func(t *testing.T, l *Log, dir *blockdev.SimDir) error {
		f := dir.File(segName(0))
		f.FailNth(blockdev.OpSync, f.Calls(blockdev.OpSync)+1)
		return nil
	}
	appendOne := func(t *testing.T, l *Log, dir *blockdev.SimDir) error { _, err := l.Append([]byte("x")); return err }
	roll := func(t *testing.T, l *Log, dir *blockdev.SimDir) error { return l.Roll() }
	syncLog := func(t *testing.T, l *Log, dir *blockdev.SimDir) error { return l.Sync() }
	wait := func(t *testing.T, l *Log, dir *blockdev.SimDir) error {
		return l.Wait(context.Background(), l.EndOffset()+10)
	}
	truncateBack := func(t *testing.T, l *Log, dir *blockdev.SimDir) error { return l.TruncateBack(0) }
	closeLog := func(t *testing.T, l *Log, dir *blockdev.SimDir) error { return l.Close() }
	cases := []struct {
		name     string
		readOnly bool
		steps    []step
	}{
		{"writable, closed", false, []step{
			{appendOne, stateWritable, nil, nil},
			{closeLog, stateClosed, nil, nil},
			{appendOne, stateClosed, ErrClosed, nil},
			{closeLog, stateClosed, ErrClosed, nil},
		}},
		{"a failed write, then a roll that meets it", false, []step{
			{failNextSync, stateWritable, nil, nil},
			{appendOne, stateFailed, wal.ErrFailed, ErrFailed},
			{appendOne, stateFailed, wal.ErrFailed, ErrFailed},
			{syncLog, stateFailed, wal.ErrFailed, ErrFailed},
			{wait, stateFailed, wal.ErrFailed, ErrFailed},
			{roll, stateFailed, ErrFailed, nil},
			{appendOne, stateFailed, ErrFailed, nil},
			{syncLog, stateFailed, ErrFailed, nil},
			{wait, stateFailed, ErrFailed, nil},
			{closeLog, stateClosed, nil, nil},
			{appendOne, stateClosed, ErrClosed, nil},
		}},
		{"a change stopped halfway", false, []step{
			{appendOne, stateWritable, nil, nil},
			{failNextSync, stateWritable, nil, nil},
			{roll, stateFailed, ErrFailed, nil},
			{truncateBack, stateFailed, ErrFailed, nil},
			{appendOne, stateFailed, ErrFailed, nil},
			{closeLog, stateClosed, nil, nil},
		}},
		{"read-only", true, []step{
			{appendOne, stateReadOnly, ErrReadOnly, nil},
			{roll, stateReadOnly, ErrReadOnly, nil},
			{syncLog, stateReadOnly, nil, nil},
			{closeLog, stateClosed, nil, nil},
			{appendOne, stateClosed, ErrClosed, nil},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := blockdev.NewSimDir(blockdev.SimOptions{})
			w, err := Open("sim", testOptions(dir))
			require.NoError(t, err)
			assert.Equal(t, stateWritable, w.loadState())
			l := w
			if tc.readOnly {
				appendN(t, w, 3)
				require.NoError(t, w.Close())
				o := testOptions(dir)
				o.ReadOnly = true
				l, err = Open("sim", o)
				require.NoError(t, err)
			}
			defer l.Close()
			for i, st := range tc.steps {
				err := st.do(t, l, dir)
				if st.is == nil {
					require.NoError(t, err, "step %d", i)
				} else {
					require.ErrorIs(t, err, st.is, "step %d", i)
				}
				if st.not != nil {
					require.NotErrorIs(t, err, st.not, "step %d", i)
				}
				require.Equal(t, st.want, l.loadState(), "step %d: %v", i, err)
			}
		})
	}
}

// stateRaceRounds: each round closes after another count of appends, in
// even rounds racing the failing write, in odd ones once the log is
// failed, so Close, the failed write and the readers meet at different
// steps.
const stateRaceRounds = 12

// TestStateDuringCloseAndAFailedWrite: appenders (one of whose fdatasyncs
// fails), a roller, and readers of every kind (Read, Stats, EndOffset,
// Writer, Wait, Sync, the state itself) run while Close does. Under -race
// this proves the state and the fields beside it (failed, active and its
// writer) are read only under their locks or atomically: a read of
// failed outside mu, or of the state as a plain field, is reported. The
// states each reader sees never go back (writable, failed, closed, in that
// order), every error is one the state explains, and every acknowledged
// append is in the log reopened after a simulated crash.
func TestStateDuringCloseAndAFailedWrite(t *testing.T) {
	order := map[logState]int{stateWritable: 0, stateFailed: 1, stateClosed: 2}
	failedRounds := 0 // rounds closed once the log was failed
	for round := range stateRaceRounds {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: uint64(round)})
			l, err := Open("sim", testOptions(dir))
			require.NoError(t, err)
			appendN(t, l, 4)
			f := dir.File(segName(0))
			f.FailNth(blockdev.OpSync, f.Calls(blockdev.OpSync)+1) // the next append's

			var attempts, acked atomic.Int64
			var maxAcked atomic.Uint64
			var wg sync.WaitGroup
			errs := make(chan error, 1<<12)
			keep := func(err error) {
				if err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
			for range 2 { // appenders
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						attempts.Add(1)
						off, err := l.Append([]byte("r"))
						if err == nil {
							acked.Add(1)
							for {
								m := maxAcked.Load()
								if off < m || maxAcked.CompareAndSwap(m, off) {
									break
								}
							}
							continue
						}
						keep(err)
						if errors.Is(err, ErrClosed) {
							return
						}
						runtime.Gosched()
					}
				}()
			}
			wg.Add(1)
			go func() { // roller: once the write failed, its rolls meet it (fail)
				defer wg.Done()
				for {
					if l.loadState() == stateWritable {
						runtime.Gosched()
						continue
					}
					err := l.Roll()
					keep(err)
					if errors.Is(err, ErrClosed) {
						return
					}
					runtime.Gosched()
				}
			}()
			seen := make([][]logState, 2)
			for i := range seen { // readers
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						st := l.loadState()
						if n := len(seen[i]); n == 0 || seen[i][n-1] != st {
							seen[i] = append(seen[i], st)
						}
						if _, err := l.Read(0, nil); !errors.Is(err, ErrClosed) {
							keep(err)
						}
						l.Stats()
						l.EndOffset()
						l.Writer()
						keep(l.Sync())
						keep(l.Wait(context.Background(), 1<<40)) // returns: the log fails, then closes
						if st == stateClosed {
							return
						}
					}
				}()
			}
			for attempts.Load() < int64(round+1) { // Close at another step each round
				runtime.Gosched()
			}
			for round%2 == 1 && l.loadState() == stateWritable {
				runtime.Gosched()
			}
			if l.loadState() == stateFailed {
				failedRounds++
			}
			closeErr := l.Close()
			wg.Wait()
			close(errs)

			assert.Equal(t, stateClosed, l.loadState())
			if closeErr != nil {
				assert.ErrorIs(t, closeErr, wal.ErrFailed, "Close fails only with the writer")
			}
			for err := range errs {
				assert.True(t, errors.Is(err, ErrClosed) || errors.Is(err, wal.ErrFailed) || errors.Is(err, ErrFailed),
					"an error the state explains: %v", err)
			}
			for i, s := range seen {
				for j := 1; j < len(s); j++ {
					assert.Less(t, order[s[j-1]], order[s[j]], "reader %d saw %v", i, s)
				}
			}

			// A crash copy: what was synced, without the fault injected.
			l, err = Open("sim", testOptions(dir.Crash(blockdev.CrashDropUnsynced)))
			require.NoError(t, err)
			defer l.Close()
			if acked.Load() > 0 {
				assert.Greater(t, l.EndOffset(), maxAcked.Load(), "every acknowledged append survives")
			}
		})
	}
	assert.GreaterOrEqual(t, failedRounds, stateRaceRounds/2, "the odd rounds close a failed log")
}
