package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// TestModelFollowers drives, on simulated directories, a writer (the
// leader), read-only logs that follow it (one refreshed by each step that
// says so, one kept refreshed by the directory's watch), a second writer
// that imports the leader's sealed segments, and a read-only log that
// follows that one: random steps (appends, syncs, rolls, TruncateFront,
// TruncateBack, writer reopens, refreshes, imports), every log checked
// against a slice of the leader's records after each step. A refreshed
// reader shows exactly what its writer has acknowledged (published in
// DURABLE), reads and iterates it exact, and no record after it; Wait on
// it returns once a refresh shows the offset waited for; Writer reports
// the acknowledged end. SEGSTORE_LONG=1 runs 100 seeds.
func TestModelFollowers(t *testing.T) {
	var mu sync.Mutex
	var total followOps
	t.Cleanup(func() {
		t.Logf("%+v", total)
		require.NotZero(t, total.imports, "no segment imported")
		require.NotZero(t, total.rewritten, "no reader saw a TruncateBack")
		require.NotZero(t, total.grew, "no refresh showed new records")
	})
	for _, seed := range testutil.Seeds(t, 4, 100) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			t.Parallel()
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("replay: SEGSTORE_SEED=%d go test ./engine -run TestModelFollowers", seed)
				}
			})
			ops := runFollowModel(t, seed)
			mu.Lock()
			defer mu.Unlock()
			total.imports += ops.imports
			total.rewritten += ops.rewritten
			total.grew += ops.grew
		})
	}
}

// followRecord is a record of the follow model: small enough that every
// batch fits a write.
func followRecord(rng *rand.Rand, off uint64) []byte {
	b := make([]byte, rng.IntN(2000))
	for i := range b {
		b[i] = byte(off*13 + uint64(i))
	}
	return b
}

// followOps counts what a run of the follow model did.
type followOps struct {
	imports   int // sealed segments imported
	rewritten int // refreshes that found the writer's TruncateBack
	grew      int // refreshes that showed new records
}

func runFollowModel(t *testing.T, seed uint64) (ops followOps) {
	rng := rand.New(rand.NewPCG(seed, 11))
	leaderDir := blockdev.NewSimDir(blockdev.SimOptions{Seed: seed})
	followerDir := blockdev.NewSimDir(blockdev.SimOptions{Seed: seed + 1})
	base := Options{SegmentSize: 128 << 10, MaxWrite: 32 << 10, CacheBytes: 256 << 10, Logger: quiet,
		IndexInterval: []int{512, 4096}[rng.IntN(2)],
		SyncMode:      []SyncMode{SyncAlways, SyncNever}[rng.IntN(2)],
		NoPreallocate: rng.IntN(2) == 0,
	}
	on := func(d *blockdev.SimDir, readOnly bool) *Log {
		t.Helper()
		o := base
		o.Dir, o.ReadOnly = d, readOnly
		l, err := Open("sim", o)
		require.NoError(t, err)
		return l
	}
	leader := on(leaderDir, false)
	follower := on(followerDir, false)
	reader := on(leaderDir, true)
	imported := on(followerDir, true) // follows follower
	watched := on(leaderDir, true)    // kept refreshed by the watch
	// keep runs KeepRefreshed on watched until the returned function
	// stops it: polling every hour, so only the watch wakes it.
	keep := func() (stop func() error) {
		ctx, cancel := context.WithCancel(context.Background())
		kept := make(chan error, 1)
		go func() { kept <- watched.KeepRefreshed(ctx, time.Hour) }()
		return func() error { cancel(); return <-kept }
	}
	stopKeeping := keep()
	defer func() {
		require.ErrorIs(t, stopKeeping(), context.Canceled)
		for _, l := range []*Log{watched, imported, reader, follower, leader} {
			require.NoError(t, l.Close())
		}
	}()

	var model [][]byte // the leader's records; below start they are dropped
	// check compares a read-only log with the records [start, end) of the
	// model that its writer has acknowledged.
	check := func(what string, r *Log, start, end uint64) {
		t.Helper()
		require.Equal(t, start, r.StartOffset(), "%s: start", what)
		require.Equal(t, end, r.EndOffset(), "%s: end", what)
		require.Equal(t, end, r.DurableOffset(), "%s: durable", what)
		for range 3 {
			if end == start {
				break
			}
			off := start + rng.Uint64N(end-start)
			got, err := r.Read(off, nil)
			require.NoError(t, err, "%s: read %d", what, off)
			require.True(t, bytes.Equal(model[off], got), "%s: read %d: %d bytes, want %d", what, off, len(got), len(model[off]))
		}
		_, err := r.Read(end, nil)
		require.ErrorIs(t, err, ErrOutOfRange, "%s: a record not acknowledged (or not there)", what)
		it := r.NewIterator(start)
		next := start
		for it.Next() {
			require.Equal(t, next, it.Offset(), "%s: iterate", what)
			require.True(t, bytes.Equal(model[next], it.Record()), "%s: iterate %d", what, next)
			next++
		}
		require.NoError(t, it.Err(), "%s: iterate", what)
		require.Equal(t, end, next, "%s: the iterator reaches the end", what)
		it.Close()
	}
	// refresh brings r up to date with its writer w and checks it. A
	// TruncateBack by the writer is reported as ErrRewritten: the reader
	// is reopened. Wait on r returns once the refresh shows the offset.
	refresh := func(what string, r **Log, w *Log, d *blockdev.SimDir) {
		t.Helper()
		target := (*r).EndOffset()
		waitCtx, stopWaiting := context.WithCancel(context.Background())
		defer stopWaiting()
		waited := make(chan error, 1)
		go func(l *Log) { waited <- l.Wait(waitCtx, target) }(*r)
		before := w.DurableOffset()
		_, err := (*r).Refresh()
		after := w.DurableOffset()
		if errors.Is(err, ErrRewritten) {
			ops.rewritten++
			require.NoError(t, (*r).Close())
			require.ErrorIs(t, <-waited, ErrClosed, "%s: a Wait on a closed log", what)
			*r = on(d, true)
			waited = nil
		} else {
			require.NoError(t, err, "%s: refresh", what)
		}
		end := (*r).EndOffset()
		if end > target {
			ops.grew++
		}
		require.GreaterOrEqual(t, end, before, "%s: the reader shows what was acknowledged before its refresh", what)
		require.LessOrEqual(t, end, after, "%s: the reader shows nothing its writer had not acknowledged", what)
		info := (*r).Writer()
		require.True(t, info.Live, "%s: the writer holds the lock", what)
		require.True(t, info.Published, "%s: the writer publishes its end", what)
		require.GreaterOrEqual(t, info.Acknowledged, end, "%s: Writer", what)
		check(what, *r, w.StartOffset(), end)
		cancelled, stop := context.WithCancel(context.Background())
		stop()
		if end > target {
			require.NoError(t, (*r).Wait(cancelled, target), "%s: Wait for a record shown", what)
			if waited != nil {
				require.NoError(t, <-waited, "%s: a Wait under way when the record appeared", what)
			}
		} else {
			require.ErrorIs(t, (*r).Wait(cancelled, end), context.Canceled, "%s: Wait for a record not shown", what)
			if waited != nil {
				stopWaiting()
				require.ErrorIs(t, <-waited, context.Canceled, "%s: a Wait for a record not shown yet", what)
			}
		}
	}

	for step := range 120 {
		switch n := rng.IntN(100); {
		case n < 40:
			recs := make([][]byte, 1+rng.IntN(4))
			for i := range recs {
				recs[i] = followRecord(rng, uint64(len(model)+i))
			}
			first, err := leader.Append(recs...)
			settle(leader)
			require.NoError(t, err)
			require.Equal(t, uint64(len(model)), first)
			model = append(model, recs...)
		case n < 48:
			require.NoError(t, leader.Sync())
		case n < 54:
			require.NoError(t, leader.Roll())
			settle(leader)
		case n < 58:
			before := leader.StartOffset() + rng.Uint64N(leader.DurableOffset()-leader.StartOffset()+1)
			require.NoError(t, leader.TruncateFront(before))
		case n < 62:
			// Not below what the follower imported: it would have diverged.
			low := max(follower.EndOffset(), leader.StartOffset())
			if low > uint64(len(model)) {
				continue
			}
			from := low + rng.Uint64N(uint64(len(model))-low+1)
			require.NoError(t, leader.TruncateBack(from))
			model = model[:from]
			// The watched reader's KeepRefreshed ends with ErrRewritten
			// (or not, if it has not looked since): open it again.
			if err := stopKeeping(); !errors.Is(err, context.Canceled) {
				require.ErrorIs(t, err, ErrRewritten)
			}
			require.NoError(t, watched.Close())
			watched = on(leaderDir, true)
			stopKeeping = keep()
		case n < 66:
			require.NoError(t, leader.Close())
			leader = on(leaderDir, false)
		case n < 86:
			refresh("reader", &reader, leader, leaderDir)
		default:
			if importLeaders(t, leaderDir, leader, follower) {
				ops.imports++
			}
			refresh("importer's reader", &imported, follower, followerDir)
			check("importer", follower, follower.StartOffset(), follower.EndOffset())
		}
		require.Equal(t, uint64(len(model)), leader.EndOffset(), "step %d", step)
		// The watched reader catches up on its own: each change wakes it.
		if acked := leader.DurableOffset(); acked > 0 {
			wctx, wcancel := context.WithTimeout(context.Background(), time.Minute) // a wedge, not a speed
			err := watched.Wait(wctx, acked-1)
			wcancel()
			require.NoError(t, err, "step %d: the watched reader wakes for the leader's acknowledged records", step)
		}
	}
	require.NoError(t, leader.Sync())
	refresh("reader", &reader, leader, leaderDir)
	require.Equal(t, uint64(len(model)), reader.EndOffset(), "a reader shows every record once they are durable")
	return ops
}

// importLeaders imports into the follower the leader's sealed segment that
// starts where the follower ends (any, for a follower without records),
// as a peer's follower receives it, byte for byte.
func importLeaders(t *testing.T, leaderDir *blockdev.SimDir, leader, follower *Log) bool {
	t.Helper()
	empty := follower.EndOffset() == follower.StartOffset()
	for _, sg := range leader.Segments() {
		if !sg.Sealed || (sg.Base != follower.EndOffset() && !(empty && sg.Base >= follower.EndOffset())) {
			continue
		}
		b := leaderDir.File(sg.File).Bytes()[:sg.Bytes]
		info, err := follower.ImportSegment(bytes.NewReader(b), sg.Base, sg.Bytes)
		require.NoError(t, err, "import %s", sg.File)
		require.Equal(t, sg.Next, info.Next)
		require.Equal(t, sg.Next, follower.EndOffset())
		return true
	}
	return false
}
