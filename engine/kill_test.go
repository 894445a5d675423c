//go:build unix

package engine

import (
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/segstore/segstore/internal/testutil"
	"github.com/stretchr/testify/require"
)

const killChildEnv = "SEGSTORE_ENGINE_KILL_CHILD"

// killRecord is record j of batch seq of appender a: its identity, then
// filler.
func killRecord(a, seq, j int) []byte {
	return testutil.Stamped(16+(a*31+seq*7+j)%900, a, seq, j)
}

func killOptions() Options {
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.Logger = 256<<10, 64<<10, quiet // rolls every few hundred appends
	return o
}

// TestEngineKillChild is the child of TestEngineKillLoop: it appends from
// four goroutines and prints "first n appender seq" per acknowledged batch.
func TestEngineKillChild(t *testing.T) {
	arg, ok := testutil.ChildArg(killChildEnv)
	if !ok {
		t.Skip("child process of TestEngineKillLoop")
	}
	cycle, dir := testutil.ParseCycleArg(arg)
	l, err := Open(dir, killOptions())
	testutil.ExitOn(err, "child open")
	testutil.Appenders{
		N: 4, MaxBatch: 4,
		ID:     func(a int) int { return cycle*8 + a },
		Record: killRecord,
		Append: l.Append,
	}.Run()
}

// TestEngineKillLoop kills a child appending durably (segments rolling all
// the while) with SIGKILL at random moments, and checks after each kill that
// every acknowledged record is in the log with its exact bytes.
func TestEngineKillLoop(t *testing.T) {
	if _, ok := testutil.ChildArg(killChildEnv); ok {
		t.Skip("in the child")
	}
	cycles := 50
	if testutil.Long() {
		cycles = 1000
	}
	dir := filepath.Join(t.TempDir(), "log")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	want := map[uint64][]byte{}
	var batches int
	for cycle := 0; cycle < cycles; cycle++ {
		child := testutil.Child{Test: "TestEngineKillChild", Env: killChildEnv, Arg: testutil.CycleArg(cycle, dir)}
		acks := testutil.ParseAcks(child.Kill(t, time.Duration(1+rng.IntN(40))*time.Millisecond, func() {}))
		testutil.AddTo(want, acks, killRecord)
		batches += len(acks)

		ro := killOptions()
		ro.ReadOnly = true
		l, err := Open(dir, ro)
		require.NoError(t, err, "cycle %d: open after SIGKILL", cycle)
		it := l.NewIterator(0)
		got := 0
		for it.Next() {
			if w, ok := want[it.Offset()]; ok {
				require.Equal(t, w, it.Record(), "cycle %d: acknowledged record %d changed", cycle, it.Offset())
				got++
			}
		}
		require.NoError(t, it.Err(), "cycle %d", cycle)
		require.Equal(t, len(want), got, "cycle %d: acknowledged records lost", cycle)
		segs := len(l.Segments())
		require.NoError(t, l.Close())
		if cycle == cycles-1 {
			t.Logf("engine kill cycles=%d acknowledged batches=%d records=%d segments=%d, 0 lost", cycles, batches, len(want), segs)
		}
	}
}
