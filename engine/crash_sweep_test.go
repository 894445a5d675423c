package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// sweepRecord is the record size of the crash sweep: about 40 records per
// segment.
const sweepRecord = 3000

// crashAction is one operation of the crash sweep, run on a log with three
// segments, the last one active. prepare, if set, runs before the crash
// is armed.
type crashAction struct {
	name    string
	prepare func(t *testing.T, l *Log)
	run     func(l *Log) error
	appends bool // run appends: an error from it means not acknowledged
}

var crashActions = []crashAction{
	{name: "roll", run: (*Log).Roll},
	{name: "append-that-rolls",
		prepare: func(t *testing.T, l *Log) {
			// Records larger than the index interval until the next one rolls.
			for !nextAppendRolls(l) {
				appendOff(t, l, 1, bigRecord(l))
			}
		},
		run: func(l *Log) error {
			_, err := l.Append(offRecord(l.EndOffset(), bigRecord(l)))
			settle(l) // the roll it triggered, with its every step
			return err
		},
		appends: true},
	{name: "retention",
		prepare: func(t *testing.T, l *Log) {
			l.opts.RetentionBytes = 5 * l.opts.SegmentSize / 2 // the roll's files hold more: the oldest go
		},
		run: (*Log).Roll},
	{name: "truncate-front", run: func(l *Log) error {
		return l.TruncateFront(l.Segments()[1].Base + 3) // drops segment 0, keeps a part of 1
	}},
	{name: "truncate-back-inside", run: func(l *Log) error {
		return l.TruncateBack(l.Segments()[1].Base + 5) // drops the active segment, rewrites segment 1
	}},
	{name: "truncate-back-at-a-base", run: func(l *Log) error {
		return l.TruncateBack(l.Segments()[1].Base) // drops segments 1 and 2, starts a new one
	}},
}

// bigRecord is a record size larger than the index interval: every frame
// of such a record is indexed.
func bigRecord(l *Log) int { return l.opts.IndexInterval + 100 }

// nextAppendRolls reports whether an append of one bigRecord rolls the
// active segment: its frame starts at the durable end and is indexed.
func nextAppendRolls(l *Log) bool {
	l.mu.RLock()
	defer l.mu.RUnlock()
	pos, _ := l.active.w.Durable()
	return pos+int64(l.opts.MaxWrite) >= l.opts.SegmentSize
}

// settle waits for the rolls that appends started in goroutines of their
// own (creation, seal, manifest, retention) to finish.
func settle(l *Log) { l.bg.Wait() }

// waitSpare waits until the spare file being prepared (if any) is ready,
// so that what follows does the same device operations in every run.
func waitSpare(l *Log) {
	l.spareMu.Lock()
	sp := l.spare
	l.spareMu.Unlock()
	if sp != nil {
		sp.hurry.Store(true) // its zeroing waits for appends otherwise
		<-sp.done
	}
}

// TestCrashAtEveryStep: for every operation that changes the log's files
// (roll, an append that rolls, retention, TruncateFront, TruncateBack
// inside a segment and at a segment's base), with and without preallocated
// files, and for every step n of it (every device write, sync, size
// change, file creation, removal, rename and directory sync), the
// simulated directory stops after n steps and crashes (unsynced writes
// lost, torn, or kept as after a process kill; in the default run one of
// these per step, in turn). Then:
//   - a read-only open shows a contiguous log, every record right, and
//     every sealed segment's export (what a view sends) passes an import's
//     checks: the footer at its end, every frame verified;
//   - a read-write open recovers: every acknowledged record is there, the
//     start and end are the operation's before or after state (exactly
//     after, if it returned success), no temporary file is left, every
//     sealed file ends at its footer and exports as above, and appends
//     continue.
func TestCrashAtEveryStep(t *testing.T) { crashAtEveryStep(t, false) }

// TestCrashAtEveryStepAfterCleanClose is TestCrashAtEveryStep on a log
// that was closed cleanly and opened again before the operation: its
// sealed segments known only from the manifest (not yet opened), its
// active segment's end and index taken from the clean close record, which
// the operation's first step removes from the manifest.
func TestCrashAtEveryStepAfterCleanClose(t *testing.T) { crashAtEveryStep(t, true) }

func crashAtEveryStep(t *testing.T, reopen bool) {
	modes := []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll}
	// The default run crashes each step one way, taking the modes in turn
	// (so each mode meets every kind of step across the operations);
	// SEGSTORE_LONG=1 crashes every step every way, tearing with 8 seeds.
	long := testutil.Long()
	tears := 1
	if long {
		tears = 8
	}
	for _, a := range crashActions {
		for _, prealloc := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/prealloc=%v", a.name, prealloc), func(t *testing.T) {
				// Each case has its own simulated directories and keeps
				// one core busy: two run at once on two.
				t.Parallel()
				// A run without a crash says how many steps the operation
				// takes and where it leaves the log.
				ref := setupCrash(t, a, prealloc, reopen, blockdev.SimOptions{Seed: 1})
				before := ref.l.Segments()
				require.NoError(t, ref.run(-1), "the operation without a crash")
				want := [2]uint64{ref.l.StartOffset(), ref.l.EndOffset()}
				require.NotEqual(t, before, ref.l.Segments(), "the operation changes the segments")
				require.NoError(t, ref.l.Close())
				for n := 0; n <= ref.steps; n++ {
					for i, mode := range modes {
						if !long && (n+i)%len(modes) != 0 {
							continue
						}
						seeds := 1
						if mode == blockdev.CrashTear {
							seeds = tears
						}
						for seed := range seeds {
							c := setupCrash(t, a, prealloc, reopen, blockdev.SimOptions{Seed: uint64(seed + 1)})
							c.crashAfter(t, n, mode, want)
						}
					}
				}
				t.Logf("%d steps", ref.steps)
			})
		}
	}
}

// crashCase is one log set up for a case of TestCrashAtEveryStep.
type crashCase struct {
	a                crashAction
	dir              *blockdev.SimDir
	o                Options
	l                *Log
	oldStart, oldEnd uint64
	steps            int // changes the operation made (after run)
}

// setupCrash makes the log of a case; reopen: closed and opened again
// before the operation is prepared.
func setupCrash(t *testing.T, a crashAction, prealloc, reopen bool, so blockdev.SimOptions) *crashCase {
	t.Helper()
	c := &crashCase{a: a, dir: blockdev.NewSimDir(so)}
	c.o = testOptions(c.dir)
	c.o.NoPreallocate = !prealloc
	var err error
	c.l, err = Open("sim", c.o)
	require.NoError(t, err)
	for len(c.l.Segments()) < 3 {
		appendOff(t, c.l, 1, sweepRecord)
		settle(c.l) // the same records in every run, whatever the roll goroutines' timing
	}
	appendOff(t, c.l, 12, sweepRecord)
	settle(c.l)
	if reopen {
		require.NoError(t, c.l.Close())
		c.l, err = Open("sim", c.o)
		require.NoError(t, err)
		rec := c.l.Stats().LastOpenRecovery
		require.True(t, rec.CleanIndex, "opened from the clean close record")
		require.Positive(t, rec.Deferred, "sealed segments known from the manifest")
	}
	if a.prepare != nil {
		a.prepare(t, c.l)
	}
	waitSpare(c.l) // from here, the same steps in every run
	c.oldStart, c.oldEnd = c.l.StartOffset(), c.l.EndOffset()
	return c
}

// run runs the operation, stopping the directory after n changes (n < 0:
// never), and counts the changes it made.
func (c *crashCase) run(n int) error {
	start := c.dir.Changes()
	c.dir.StopAfter(n)
	err := c.a.run(c.l)
	c.steps = c.dir.Changes() - start
	return err
}

// crashAfter runs the operation, crashes after its step n and checks what
// the reopened log holds; want is the start and end the whole operation
// leaves.
func (c *crashCase) crashAfter(t *testing.T, n int, mode blockdev.CrashMode, want [2]uint64) {
	t.Helper()
	what := fmt.Sprintf("%s, crash after step %d, mode %d", c.a.name, n, mode)
	err := c.run(n)
	crashed := c.dir.Crash(mode)
	c.l.Close() // fails: its devices are gone
	o := c.o
	o.Dir = crashed

	check := func(l *Log, readOnly bool) {
		t.Helper()
		got := [2]uint64{l.StartOffset(), l.DurableOffset()}
		if err == nil {
			// Succeeded (for an append: acknowledged, whatever its roll
			// did): every change it made or acknowledged is kept.
			require.Equal(t, want, got, "%s: start and end after success", what)
		} else {
			require.Contains(t, []uint64{c.oldStart, want[0]}, got[0], "%s: start is the old or the new one", what)
			require.GreaterOrEqual(t, got[1], min(c.oldEnd, want[1]), "%s: acknowledged records lost", what)
			require.LessOrEqual(t, got[1], max(c.oldEnd, want[1]), "%s: more records than were appended", what)
			if c.a.appends && mode == blockdev.CrashDropUnsynced {
				// Only what was synced survived: the batch was durable.
				require.Less(t, got[1], want[1], "%s: a durable batch was reported as failed: %v", what, err)
			}
		}
		requireOffRecordsSized(t, l, got[0], got[1], what)
		for _, si := range l.Segments() {
			if !si.Sealed {
				continue
			}
			requireExportImports(t, l, crashed, si)
			if !readOnly {
				size, err := crashed.Size(si.File)
				require.NoError(t, err)
				require.Equal(t, si.ExportSize(), size, "%s: sealed %s ends at its footer", what, si.File)
			}
		}
	}

	ro := o
	ro.ReadOnly = true
	r, err2 := Open("sim", ro)
	require.NoError(t, err2, what)
	check(r, true)
	require.NoError(t, r.Close())

	l, err2 := Open("sim", o)
	require.NoError(t, err2, what)
	check(l, false)
	names, err2 := crashed.List()
	require.NoError(t, err2)
	for _, name := range names {
		require.False(t, strings.HasSuffix(name, tmpSuffix), "%s: %s left behind", what, name)
	}
	end := l.EndOffset()
	appendOff(t, l, 1, sweepRecord)
	require.NoError(t, l.Roll(), what)
	require.NoError(t, l.Close(), what)
	l, err2 = Open("sim", o)
	require.NoError(t, err2, what)
	require.Equal(t, end+1, l.EndOffset(), what)
	require.NoError(t, l.Close())
}

// requireOffRecordsSized is requireOffRecords for the sweep's records,
// whose size depends on how they were appended: each is checked against
// the sizes the sweep uses.
func requireOffRecordsSized(t *testing.T, l *Log, from, to uint64, what string) {
	t.Helper()
	check := func(off uint64, got []byte) error {
		err := checkOffRecord(off, got, sweepRecord)
		if err != nil && checkOffRecord(off, got, bigRecord(l)) == nil {
			return nil
		}
		return err
	}
	for off := from; off < to; off++ {
		got, err := l.Read(off, nil)
		require.NoError(t, err, "%s: read %d", what, off)
		require.NoError(t, check(off, got), what)
	}
	it := l.NewIterator(from)
	defer it.Close()
	next := from
	for it.Next() {
		require.Equal(t, next, it.Offset(), what)
		require.NoError(t, check(next, it.Record()), what)
		next++
	}
	require.NoError(t, it.Err(), what)
	require.Equal(t, to, max(next, from), "%s: the iterator reaches the end", what)
}
