//go:build unix

package wal

import (
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

const killChildEnv = "SEGSTORE_KILL_CHILD"

// TestKillChild is the child half of TestKillLoop: it only runs when the
// parent starts this test binary with SEGSTORE_KILL_CHILD=<cycle>,<file>. It
// appends from several goroutines in SyncAlways mode and prints one line per
// acknowledged batch until it is killed.
func TestKillChild(t *testing.T) {
	arg, ok := testutil.ChildArg(killChildEnv)
	if !ok {
		t.Skip("child process of TestKillLoop")
	}
	cycle, path := testutil.ParseCycleArg(arg)
	dev, err := blockdev.Open(path, blockdev.Options{Create: true})
	testutil.ExitOn(err, "child")
	var w *Writer
	if size, _ := dev.Size(); size == 0 {
		w, err = Create(dev, 0, Options{Preallocate: 1 << 20, PreZero: true, MaxWrite: 64 << 10})
		if err == nil {
			err = blockdev.SyncDir(filepath.Dir(path)) // the new file's name: its commit point
		}
	} else {
		w, _, err = Open(dev, Options{})
	}
	testutil.ExitOn(err, "child")
	testutil.Appenders{
		N: 4, MaxBatch: 3,
		ID:     func(a int) int { return cycle*16 + a },
		Record: crashRecord,
		Append: w.Append,
	}.Run()
}

// TestKillLoop starts a child that appends durably and reports acks through
// a pipe, kills it with SIGKILL at a random moment, and checks that every
// acknowledged record is in the file with its exact bytes and offset. The
// next child recovers the same file and goes on.
func TestKillLoop(t *testing.T) {
	if _, ok := testutil.ChildArg(killChildEnv); ok {
		t.Skip("in the child")
	}
	cycles := 50
	if testutil.Long() {
		cycles = 1000
	}
	path := filepath.Join(t.TempDir(), "kill.wal")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	want := map[uint64][]byte{}
	var totalAcks, tornCuts int
	for cycle := 0; cycle < cycles; cycle++ {
		acks := runChild(t, rng, cycle, path, func() {})
		totalAcks += len(acks)
		addAcks(want, acks)
		if checkAcked(t, path, want, cycle) {
			tornCuts++
		}
	}
	t.Logf("kill cycles=%d acknowledged batches=%d records=%d torn tails seen=%d", cycles, totalAcks, len(want), tornCuts)
}

// runChild starts TestKillChild appending to path, waits for its first
// acknowledgement and a random 1-30 ms more, calls interrupt (which may cut
// the power), kills the child with SIGKILL, and returns every
// acknowledgement it printed.
func runChild(t *testing.T, rng *rand.Rand, cycle int, path string, interrupt func()) []testutil.Ack {
	child := testutil.Child{Test: "TestKillChild", Env: killChildEnv, Arg: testutil.CycleArg(cycle, path)}
	return testutil.ParseAcks(child.Kill(t, time.Duration(1+rng.IntN(30))*time.Millisecond, interrupt))
}

func addAcks(want map[uint64][]byte, acks []testutil.Ack) {
	testutil.AddTo(want, acks, crashRecord)
}

// checkAcked opens path read-only and requires every acknowledged record
// with its exact bytes; it reports whether recovery found a torn tail.
func checkAcked(t *testing.T, path string, want map[uint64][]byte, cycle int) (torn bool) {
	dev, err := blockdev.Open(path, blockdev.Options{ReadOnly: true})
	require.NoError(t, err, "cycle %d: the log file must exist once anything in it was acknowledged", cycle)
	got, rec, err := tryReadAll(dev)
	dev.Close()
	require.NoError(t, err, "cycle %d: recovery", cycle)
	for off, r := range want {
		require.Equal(t, r, got[off], "cycle %d: acknowledged record %d lost or changed", cycle, off)
	}
	return rec.Torn != nil
}
