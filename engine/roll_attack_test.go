package engine

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// TestRollFailingAfterTheCut: the second half of a roll (seal, manifest,
// retention) fails at each of its steps after the next segment took
// acknowledged appends. Every acknowledged record stays readable, the log
// says why it stopped, Sync, Append and Close return, and a reopen after a
// crash keeps every acknowledged record.
func TestRollFailingAfterTheCut(t *testing.T) {
	for _, retention := range []bool{false, true} {
		for _, mode := range []SyncMode{SyncAlways, SyncInterval} {
			steps := -1
			for n := 0; steps < 0 || n <= steps; n++ {
				what := fmt.Sprintf("retention=%v mode=%v stop after %d", retention, mode, n)
				dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
				o := testOptions(dir)
				o.SyncMode = mode
				o.SyncInterval = MinSyncInterval * 1000
				if retention {
					o.RetentionBytes = 1 // drop every sealed segment
				}
				l, err := Open("sim", o)
				require.NoError(t, err)
				cut, finish := holdFirstRollAtCut(l)
				appendUntilCut(t, l, cut, nil)
				end := appendOff(t, l, 5, 3000) // acknowledged, in the next segment
				require.NoError(t, l.syncActive())
				start := l.StartOffset()
				c0 := dir.Changes()
				if steps >= 0 {
					dir.StopAfter(n)
				}
				close(finish)
				settle(l)
				if steps < 0 {
					steps = dir.Changes() - c0
					t.Logf("finishRoll: %d changes (retention=%v)", steps, retention)
					require.NoError(t, l.Close())
					continue
				}
				_, aerr := l.Append(offRecord(end, 3000))
				serr := l.Sync()
				if n < steps {
					require.Error(t, aerr, what)
					require.Error(t, serr, what)
				}
				for off := l.StartOffset(); off < end; off++ {
					got, err := l.Read(off, nil)
					require.NoError(t, err, "%s: read %d", what, off)
					require.NoError(t, checkOffRecord(off, got, 3000), what)
				}
				l.Close()
				for _, cm := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
					o.Dir = dir.Crash(cm)
					l2, err := Open("sim", o)
					require.NoError(t, err, "%s crash %d", what, cm)
					require.GreaterOrEqual(t, l2.EndOffset(), end, "%s crash %d: acknowledged records lost", what, cm)
					for off := max(l2.StartOffset(), start); off < end; off++ {
						got, err := l2.Read(off, nil)
						require.NoError(t, err, "%s crash %d: read %d after reopen", what, cm, off)
						require.NoError(t, checkOffRecord(off, got, 3000), what)
					}
					require.NoError(t, l2.Close())
				}
			}
		}
	}
}

// TestFollowersDuringAHeldRoll: read-only logs (one open before the roll,
// refreshed; one opened while the roll is held between its cut and its
// seal) show only acknowledged records, with the writer's bytes, and no
// error, in each state of the roll; once the roll is done they catch up.
func TestFollowersDuringAHeldRoll(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncNever} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			opts := realOptions()
			opts.SyncMode = mode
			path := t.TempDir()
			w, err := Open(path, opts)
			require.NoError(t, err)
			defer w.Close()
			ro := opts
			ro.ReadOnly = true
			r, err := Open(path, ro)
			require.NoError(t, err)
			defer r.Close()
			cut, finish := holdFirstRollAtCut(w)
			look := func(what string) {
				t.Helper()
				_, err := r.Refresh()
				require.NoError(t, err, what)
				requireOnlyAcknowledged(t, w, r, what+" (refreshed)")
				r2, err := Open(path, ro)
				require.NoError(t, err, what)
				requireOnlyAcknowledged(t, w, r2, what+" (opened)")
				it := r2.NewIterator(r2.StartOffset())
				n := r2.StartOffset()
				for it.Next() {
					n++
				}
				require.NoError(t, it.Err(), what)
				it.Close()
				require.Equal(t, r2.EndOffset(), n, what+": iterator")
				require.NoError(t, r2.Close())
			}
			appendUntilCut(t, w, cut, func(off uint64) {
				if off%8 == 0 {
					look("filling")
				}
			})
			look("held after the cut")
			appendOff(t, w, 3, 3000)
			look("held, appended to the next segment")
			require.NoError(t, w.syncActive())
			look("held, synced the next segment")
			close(finish)
			settle(w)
			look("after the seal")
			require.NoError(t, w.Sync())
			look("synced")
			require.Equal(t, w.EndOffset(), r.EndOffset(), "caught up")
		})
	}
}

// TestRollsRacingChanges: appenders fill tiny segments (a roll every few
// batches) while other goroutines truncate front and back, roll, sync and
// read Stats; then Close. No call fails falsely or wedges, Stats never go
// back, at most one segment is retired at a time, and no roll goroutine
// outlives Close.
func TestRollsRacingChanges(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	o := testOptions(dir)
	o.SyncMode = SyncNever
	l, err := Open("sim", o)
	require.NoError(t, err)
	stop := make(chan struct{})
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	run := func(f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := f(); err != nil && !errors.Is(err, ErrOutOfRange) {
					errs <- err
					return
				}
			}
		}()
	}
	batch := make([][]byte, 8)
	for i := range batch {
		batch[i] = make([]byte, 3000)
	}
	for range 2 {
		run(func() error { _, err := l.Append(batch...); return err })
	}
	run(func() error { return l.Sync() })
	run(func() error { return l.Roll() })
	run(func() error {
		if e := l.EndOffset(); e > 40 {
			return l.TruncateFront(e - 40)
		}
		return nil
	})
	run(func() error {
		if e := l.EndOffset(); e > 20 {
			return l.TruncateBack(e - 3)
		}
		return nil
	})
	var last Stats
	run(func() error {
		st := l.Stats()
		if st.Appends < last.Appends || st.Records < last.Records || st.Writes < last.Writes || st.Syncs < last.Syncs {
			return fmt.Errorf("stats went back: %+v then %+v", last, st)
		}
		last = st
		retired := 0
		for _, s := range *l.segs.Load() {
			if s.retired.Load() && !s.isSealed() {
				retired++
			}
		}
		if retired > 1 {
			return fmt.Errorf("%d segments retired at once", retired)
		}
		return nil
	})
	for l.Stats().Appends < 400 {
		select {
		case err := <-errs:
			t.Fatal(err)
		default:
		}
		runtime.Gosched()
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, l.Close())
	l.bg.Wait()
	require.Nil(t, l.rolling.Load())
}

// appendUntilCut appends 3,000-byte records to l, one a batch, until the
// roll the test holds has switched segments (cut is closed), calling each,
// if not nil, with every offset appended.
func appendUntilCut(t *testing.T, l *Log, cut <-chan struct{}, each func(off uint64)) {
	t.Helper()
	n := len(l.Segments())
	for {
		select {
		case <-cut:
			return
		default:
		}
		// A roll under way, or one that made the next segment but has not
		// reached its hook yet: an append now would go to the next segment
		// (and could fill it, starting a roll that waits for the held one).
		if l.rolling.Load() != nil || len(l.Segments()) != n {
			<-cut
			return
		}
		off := appendOff(t, l, 1, 3000)
		if each != nil {
			each(off)
		}
	}
}

// holdFirstRollAtCut makes l's first roll stop at its cut: cut is closed
// when it gets there, and the roll goes on when finish is closed. Later
// rolls run through.
func holdFirstRollAtCut(l *Log) (cut, finish chan struct{}) {
	cut, finish = make(chan struct{}), make(chan struct{})
	hooked := false
	l.rollHook = func(step string) {
		if step == "cut" && !hooked {
			hooked = true
			close(cut)
			<-finish
		}
	}
	return cut, finish
}
