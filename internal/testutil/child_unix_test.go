//go:build unix

package testutil

import (
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const childEnv = "SEGSTORE_TESTUTIL_CHILD"

// TestChildAppends is the child of TestKillCollectsEveryAck: with its
// argument "ok" it acknowledges batches of 1 to 3 records from three
// appenders at consecutive offsets until it is killed; with "fail" its
// first append fails.
func TestChildAppends(t *testing.T) {
	arg, ok := ChildArg(childEnv)
	if !ok {
		t.Skip("child process of TestKillCollectsEveryAck")
	}
	_, arg = ParseCycleArg(arg)
	var next atomic.Uint64
	Appenders{
		N: 3, MaxBatch: 3,
		ID:     func(a int) int { return 100 + a },
		Record: func(id, seq, j int) []byte { return []byte(strconv.Itoa(id*1000 + seq*10 + j)) },
		Append: func(recs ...[]byte) (uint64, error) {
			if arg == "fail" {
				return 0, errors.New("the device is gone")
			}
			return next.Add(uint64(len(recs))) - uint64(len(recs)), nil
		},
	}.Run()
}

// TestKillCollectsEveryAck: the child's acks are all collected, each
// appender's in order with none missing, interrupt is called once before
// the kill, and a child that fails at once fails the parent with what it
// said.
func TestKillCollectsEveryAck(t *testing.T) {
	if _, ok := ChildArg(childEnv); ok {
		t.Skip("in the child")
	}
	interrupts := 0
	lines := Child{Test: "TestChildAppends", Env: childEnv, Arg: CycleArg(3, "ok")}.Kill(t, 5*time.Millisecond, func() { interrupts++ })
	assert.Equal(t, 1, interrupts)
	acks := ParseAcks(append(lines, "not an ack"))
	require.NotEmpty(t, acks)
	for _, k := range acks {
		require.Equal(t, 1+(k.ID-100+k.Seq)%3, k.N, "batch %d of appender %d", k.Seq, k.ID)
	}
	require.GreaterOrEqual(t, len(lines), len(acks), "a line cut by the kill is no ack")
	seqs := map[int]int{}
	covered := map[uint64]bool{}
	for _, k := range acks {
		require.Equal(t, seqs[k.ID], k.Seq, "appender %d's acks in order, none missing", k.ID)
		seqs[k.ID]++
		for j := 0; j < k.N; j++ {
			require.False(t, covered[k.First+uint64(j)], "offset %d acknowledged twice", k.First+uint64(j))
			covered[k.First+uint64(j)] = true
		}
	}
	want := map[uint64][]byte{}
	AddTo(want, acks, func(id, seq, j int) []byte { return []byte(strconv.Itoa(id*1000 + seq*10 + j)) })
	assert.Len(t, want, len(covered))
	k := acks[0]
	assert.Equal(t, strconv.Itoa(k.ID*1000+k.Seq*10), string(want[k.First]))

	rec := &recorder{TB: t}
	func() {
		defer func() { _ = recover() }()
		Child{Test: "TestChildAppends", Env: childEnv, Arg: CycleArg(4, "fail")}.Kill(rec, 0, func() { interrupts++ })
	}()
	assert.True(t, rec.failed, "a child that made no progress fails the test")
	assert.Contains(t, rec.msg, "made no progress: child append: the device is gone", "with what the child said")
	assert.Equal(t, 1, interrupts, "and is not interrupted")
}
