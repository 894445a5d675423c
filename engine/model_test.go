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
	"sync/atomic"
	"testing"
	"time"

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
	var ops [12]int
	for _, seed := range seeds(t, 500, 5000) {
		if !t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { runModel(t, seed, &ops) }) {
			t.Fatalf("seed %d failed; replay: SEGSTORE_SEED=%d go test ./engine -run TestModel", seed, seed)
		}
	}
	t.Logf("ops: append=%d read=%d iterate=%d roll=%d sync=%d reopen=%d crash=%d refused=%d truncate-front=%d truncate-back=%d seek-time=%d read-below-start=%d",
		ops[0], ops[1], ops[2], ops[3], ops[4], ops[5], ops[6], ops[7], ops[8], ops[9], ops[10], ops[11])
}

func runModel(t *testing.T, seed uint64, ops *[12]int) {
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: seed})
	var clock atomic.Int64 // every reading is a new millisecond
	opts := Options{
		Dir: dir, SegmentSize: 256 << 10, MaxWrite: 64 << 10, CacheBytes: 256 << 10,
		IndexInterval: []int{512, 4096, 16 << 10}[rng.IntN(3)],
		Preallocate:   rng.IntN(2) == 0,
		Logger:        quiet,
		Now:           func() time.Time { return time.UnixMilli(clock.Add(1)) },
	}
	if rng.IntN(4) == 0 {
		opts.RetentionBytes = 600 << 10 // retention drops whole old segments
	}
	open := func() *Log {
		l, err := Open("sim", opts)
		require.NoError(t, err)
		return l
	}
	l := open()
	var model [][]byte   // every record ever at each offset below the end
	var batchOf []uint64 // the first offset of each record's batch
	start := uint64(0)   // model's first retained offset
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
			for range recs {
				batchOf = append(batchOf, first)
			}
			start = max(start, l.StartOffset()) // retention may have moved it
		case r < 65:
			ops[1]++
			if uint64(len(model)) == start {
				continue
			}
			off := start + uint64(rng.IntN(len(model)-int(start)))
			got, err := l.Read(off, nil)
			check("read", off, got, err)
			if start > 0 {
				ops[11]++
				_, err := l.Read(start-1, nil)
				require.ErrorIs(t, err, ErrOutOfRange, "read below the start")
			}
		case r < 72:
			ops[2]++
			from := start
			if uint64(len(model)) > start {
				from += uint64(rng.IntN(len(model) - int(start)))
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
		case r < 76:
			ops[8]++
			before := start + uint64(rng.IntN(len(model)-int(start)+1))
			require.NoError(t, l.TruncateFront(before))
			start = max(start, before)
			require.Equal(t, start, l.StartOffset())
		case r < 80:
			ops[9]++
			from := start + uint64(rng.IntN(len(model)-int(start)+1))
			require.NoError(t, l.TruncateBack(from))
			model, batchOf = model[:from], batchOf[:from]
		case r < 83:
			ops[10]++
			if uint64(len(model)) == start {
				continue
			}
			off := start + uint64(rng.IntN(len(model)-int(start)))
			it := l.NewIterator(off)
			require.True(t, it.Next())
			ts := it.Time()
			it.Close()
			got, err := l.SeekTime(ts)
			require.NoError(t, err)
			require.Equal(t, max(start, batchOf[off]), got, "SeekTime(time of record %d)", off)
		case r < 86:
			ops[3]++
			require.NoError(t, l.Roll())
			start = max(start, l.StartOffset())
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
		require.Equal(t, start, l.StartOffset(), "step %d", step)
	}
	_, err := l.Read(uint64(len(model)), nil)
	require.True(t, errors.Is(err, ErrOutOfRange), "reading at the end: %v", err)
	require.NoError(t, l.Close())
}
