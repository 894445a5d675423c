package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// SEGSTORE_LONG=1 runs more seeds; SEGSTORE_SEED=N replays one.
func seeds(t *testing.T, short, long int) []uint64 {
	if s := os.Getenv("SEGSTORE_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, "SEGSTORE_SEED")
		return []uint64{n}
	}
	n := short
	if os.Getenv("SEGSTORE_LONG") != "" {
		n = long
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func modelRecord(rng *rand.Rand, off uint64) []byte {
	n := rng.IntN(3000)
	if rng.IntN(10) == 0 {
		n = rng.IntN(20 << 10) // some large records
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(off*7 + uint64(i))
	}
	return b
}

// TestModel drives a Log on a simulated directory with a random sequence of
// Append, Read, iterate, Roll, Sync, Close/reopen and crash/reopen, and
// checks every answer against a slice of the records appended. SyncAlways:
// every acknowledged append survives every crash.
func TestModel(t *testing.T) {
	var ops [8]int
	for _, seed := range seeds(t, 500, 5000) {
		if !t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { runModel(t, seed, &ops) }) {
			t.Fatalf("seed %d failed; replay: SEGSTORE_SEED=%d go test ./engine -run TestModel", seed, seed)
		}
	}
	t.Logf("ops: append=%d read=%d iterate=%d roll=%d sync=%d reopen=%d crash=%d refused=%d", ops[0], ops[1], ops[2], ops[3], ops[4], ops[5], ops[6], ops[7])
}

func runModel(t *testing.T, seed uint64, ops *[8]int) {
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: seed})
	opts := Options{
		Dir: dir, SegmentSize: 256 << 10, MaxWrite: 64 << 10, CacheBytes: 256 << 10,
		IndexInterval: []int{512, 4096, 16 << 10}[rng.IntN(3)],
		Preallocate:   rng.IntN(2) == 0,
		Logger:        quiet,
	}
	open := func() *Log {
		l, err := Open("sim", opts)
		require.NoError(t, err)
		return l
	}
	l := open()
	var model [][]byte
	check := func(what string, off uint64, got []byte, err error) {
		t.Helper()
		require.NoError(t, err, "%s %d", what, off)
		require.True(t, bytes.Equal(model[off], got), "%s %d: %d bytes, want %d", what, off, len(got), len(model[off]))
	}
	for step := 0; step < 150; step++ {
		switch r := rng.IntN(100); {
		case r < 45:
			ops[0]++
			n := 1 + rng.IntN(6)
			recs := make([][]byte, n)
			for i := range recs {
				recs[i] = modelRecord(rng, uint64(len(model)+i))
			}
			first, err := l.Append(recs...)
			if errors.Is(err, ErrBatchTooLarge) {
				ops[7]++
				continue // refused whole; the check below proves nothing was written
			}
			require.NoError(t, err)
			require.Equal(t, uint64(len(model)), first)
			model = append(model, recs...)
		case r < 70:
			ops[1]++
			if len(model) == 0 {
				continue
			}
			off := uint64(rng.IntN(len(model)))
			got, err := l.Read(off, nil)
			check("read", off, got, err)
		case r < 80:
			ops[2]++
			from := uint64(0)
			if len(model) > 0 {
				from = uint64(rng.IntN(len(model)))
			}
			it := l.NewIterator(from)
			next := from
			for it.Next() {
				require.Equal(t, next, it.Offset())
				check("iterate", next, it.Record(), nil)
				next++
			}
			require.NoError(t, it.Err())
			require.Equal(t, uint64(len(model)), max(next, from), "the iterator must reach the end")
			it.Close()
		case r < 86:
			ops[3]++
			require.NoError(t, l.Roll())
		case r < 90:
			ops[4]++
			require.NoError(t, l.Sync())
		case r < 95:
			ops[5]++
			require.NoError(t, l.Close())
			l = open()
		default:
			ops[6]++
			dir = dir.Crash([]blockdev.CrashMode{blockdev.CrashTear, blockdev.CrashDropUnsynced}[rng.IntN(2)])
			l.Close() // fails: its devices are gone
			opts.Dir = dir
			l = open()
		}
		require.Equal(t, uint64(len(model)), l.EndOffset(), "step %d", step)
		require.Equal(t, uint64(len(model)), l.DurableOffset(), "step %d", step)
	}
	_, err := l.Read(uint64(len(model)), nil)
	require.True(t, errors.Is(err, ErrOutOfRange), "reading at the end: %v", err)
	require.NoError(t, l.Close())
}
