package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

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
	ops := runSeeds(t, testutil.Seeds(t, 150, 5000), fixedOptions, "go test ./engine -run 'TestModel$'")
	t.Cleanup(func() { t.Log(ops) })
}

// TestModelOptions: the option space. Each seed draws Options at random
// (segment sizes from 64 KiB, aligned or not; every MaxWrite and index
// interval from the smallest, derived or given; preallocation on and off;
// every sync mode; caches from the smallest, own or shared; open-file
// bounds from one; age limits and retention; verify on open), and again
// at some reopens: every draw is
// either refused at Open with an OptionError naming the field, or runs the
// model (appends with rolls, reads, iterators, truncations, reopens,
// crashes) with every answer checked. SEGSTORE_LONG=1 runs 1,000 seeds.
func TestModelOptions(t *testing.T) {
	ops := runSeeds(t, testutil.Seeds(t, 48, 1000), drawOptions, "go test ./engine -run TestModelOptions")
	t.Cleanup(func() {
		t.Log(ops)
		require.NotZero(t, ops[opRoll]+ops[opRolled], "no segment rolled")
	})
}

// runSeeds runs the model once per seed, each seed a parallel subtest of
// t (each has its own simulated directory, random source and clock, and
// the package's tests set no state they share; a seed keeps one core
// busy, so two run at once on two). The operations counted are complete
// once t's subtests are (in t.Cleanup). A failed seed logs how to replay
// it alone.
func runSeeds(t *testing.T, seeds []uint64, draw func(*rand.Rand) Options, replay string) *modelOps {
	var mu sync.Mutex
	var ops modelOps
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			t.Parallel()
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("seed %d failed; replay: SEGSTORE_SEED=%d %s", seed, seed, replay)
				}
			})
			var own modelOps
			runModel(t, seed, draw, &own)
			mu.Lock()
			defer mu.Unlock()
			for i := range ops {
				ops[i] += own[i]
			}
		})
	}
	return &ops
}

// fixedOptions are TestModel's: small segments that roll, SyncAlways.
func fixedOptions(rng *rand.Rand) Options {
	return Options{
		SegmentSize: 256 << 10, MaxWrite: 64 << 10, CacheBytes: 256 << 10,
		IndexInterval:  []int{512, 4096, 16 << 10}[rng.IntN(3)],
		NoPreallocate:  rng.IntN(2) != 0,
		RetentionBytes: []int64{0, 0, 0, 600 << 10}[rng.IntN(4)], // retention drops whole old segments
	}
}

// drawOptions draws from the whole option space, where it is small enough
// to run in memory: most draws are accepted, some refused.
func drawOptions(rng *rand.Rand) Options {
	pick := func(vs ...int64) int64 { return vs[rng.IntN(len(vs))] }
	o := Options{
		SegmentSize:     pick(64<<10, 64<<10, 96<<10, 128<<10, 128<<10, 256<<10, 512<<10, 1<<20, 2<<20),
		MaxWrite:        int(pick(0, 0, 16<<10, 20000, 32<<10, 64<<10, 256<<10, 1<<20)),
		IndexInterval:   int(pick(0, 0, 512, 4096, 16<<10, 64<<10, 1<<20)),
		NoPreallocate:   rng.IntN(2) != 0,
		SyncMode:        []SyncMode{SyncAlways, SyncInterval, SyncNever}[rng.IntN(3)],
		SyncInterval:    time.Duration(pick(0, int64(time.Millisecond), int64(5*time.Millisecond))),
		CacheBytes:      pick(0, 64<<10, 100<<10, 1<<20),
		VerifyOnOpen:    rng.IntN(4) == 0,
		MaxOpenSegments: int(pick(0, 1, 2, 64)),
		// The clock moves a millisecond per reading, a few per step.
		SegmentAge:     time.Duration(pick(0, 0, 0, int64(50*time.Millisecond), int64(time.Second))),
		RetentionBytes: pick(0, 0, 0, 1, 300<<10, 1<<20),
		RetentionAge:   time.Duration(pick(0, 0, 0, int64(200*time.Millisecond))),
	}
	if rng.IntN(3) == 0 {
		o.SegmentSize += rng.Int64N(64 << 10) // not a whole number of blocks
	}
	return o
}

// Operations the model counts (modelOps), by index.
const (
	opAppend = iota
	opRead
	opIterate
	opRoll
	opSync
	opReopen
	opCrash
	opTooLarge
	opTruncateFront
	opTruncateBack
	opSeekTime
	opReadBelowStart
	opRefused // option draws Open refused
	opRedrawn // reopens with new options
	opRolled  // segments rolled by appends (the log's own, not Roll)
	opCount
)

type modelOps [opCount]int

func (o modelOps) String() string {
	names := [opCount]string{"append", "read", "iterate", "roll", "sync", "reopen", "crash", "too-large", "truncate-front",
		"truncate-back", "seek-time", "read-below-start", "options-refused", "options-redrawn", "rolled"}
	var b strings.Builder
	b.WriteString("ops:")
	for i, n := range names {
		fmt.Fprintf(&b, " %s=%d", n, o[i])
	}
	return b.String()
}

// runModel runs one seed of the model on options from draw (which sets
// neither Dir, Logger nor Now). A draw Open refuses must be refused with
// an OptionError; the run then draws again (the first open) or keeps the
// options it had (a reopen).
func runModel(t *testing.T, seed uint64, draw func(*rand.Rand) Options, ops *modelOps) {
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: seed})
	var clock atomic.Int64 // every reading is a new millisecond
	var shared *cache.Cache
	defer func() {
		if shared != nil {
			shared.Close()
		}
	}()
	fill := func(o Options) Options {
		o.Dir, o.Logger = dir, quiet
		o.Now = func() time.Time { return time.UnixMilli(clock.Add(1)) }
		if o.CacheBytes == 100<<10 { // a cache shared with other logs, instead
			if shared == nil {
				var err error
				shared, err = cache.New(256 << 10)
				require.NoError(t, err)
			}
			o.Cache = shared
		}
		return o
	}
	// tryOpen opens with a fresh draw; nil if Open refused it (checked).
	tryOpen := func() (*Log, Options) {
		o := fill(draw(rng))
		l, err := Open("sim", o)
		var oe *OptionError
		if errors.As(err, &oe) {
			ops[opRefused]++
			require.Contains(t, err.Error(), "engine: Options."+oe.Option+" ", "the error names the field")
			return nil, o
		}
		require.NoError(t, err, "options %+v", o)
		return l, o
	}
	var l *Log
	var opts Options
	for l == nil {
		l, opts = tryOpen()
	}
	open := func() *Log {
		if rng.IntN(3) == 0 { // the same store, other options
			if nl, o := tryOpen(); nl != nil {
				ops[opRedrawn]++
				opts = o
				return nl
			}
		}
		opts.Dir = dir
		l, err := Open("sim", opts)
		require.NoError(t, err, "reopen with options %+v", opts)
		return l
	}
	var model [][]byte   // every record ever at each offset below the end
	var batchOf []uint64 // the first offset of each record's batch
	start := uint64(0)   // model's first retained offset
	check := func(what string, off uint64, got []byte, err error) {
		t.Helper()
		require.NoError(t, err, "%s %d", what, off)
		require.True(t, bytes.Equal(model[off], got), "%s %d: %d bytes, want %d", what, off, len(got), len(model[off]))
	}
	// readable is the end of what reads and iterators must see: every
	// record in SyncAlways mode, the durable ones in the others.
	readable := func() uint64 {
		if opts.SyncMode == SyncAlways {
			return uint64(len(model))
		}
		return l.DurableOffset()
	}
	for step := 0; step < 150; step++ {
		switch r := rng.IntN(100); {
		case r < 45:
			ops[opAppend]++
			n := 1 + rng.IntN(6)
			recs := make([][]byte, n)
			for i := range recs {
				recs[i] = modelRecord(rng, uint64(len(model)+i))
			}
			active := l.Segments()[len(l.Segments())-1].Base
			// A segment made by an earlier open with a smaller MaxWrite
			// rolls early for a batch it cannot take.
			activeSeg := (*l.segs.Load())[len(*l.segs.Load())-1]
			tooLargeForActive := !wal.BatchFits(recs, int(activeSeg.hdr.MaxWrite), int64(activeSeg.dev.Alignment().Block))
			first, err := l.Append(recs...)
			settle(l) // a roll it started runs in a goroutine; its retention moves the start
			if errors.Is(err, ErrBatchTooLarge) {
				ops[opTooLarge]++
				continue // refused whole; the check below proves nothing was written
			}
			require.NoError(t, err)
			require.Equal(t, uint64(len(model)), first)
			model = append(model, recs...)
			for range recs {
				batchOf = append(batchOf, first)
			}
			start = max(start, l.StartOffset()) // retention may have moved it
			if segs := l.Segments(); segs[len(segs)-1].Base != active {
				ops[opRolled]++
				// Rolled for its size (not its age): at least half full,
				// never at nearly every append.
				for _, sg := range segs {
					if sg.Base == active && opts.SegmentAge == 0 && !tooLargeForActive {
						require.GreaterOrEqual(t, sg.DataEnd, opts.SegmentSize/2, "segment %d rolled by an append", sg.Base)
					}
				}
			}
		case r < 65:
			ops[opRead]++
			end := readable()
			if end == start {
				continue
			}
			off := start + rng.Uint64N(end-start)
			got, err := l.Read(off, nil)
			check("read", off, got, err)
			if start > 0 {
				ops[opReadBelowStart]++
				_, err := l.Read(start-1, nil)
				require.ErrorIs(t, err, ErrOutOfRange, "read below the start")
			}
		case r < 72:
			ops[opIterate]++
			end := readable()
			from := start
			if end > start {
				from += rng.Uint64N(end - start)
			}
			it := l.NewIterator(from)
			next := from
			for it.Next() {
				require.Equal(t, next, it.Offset())
				check("iterate", next, it.Record(), nil)
				next++
			}
			require.NoError(t, it.Err())
			require.GreaterOrEqual(t, max(next, from), end, "the iterator must reach the end")
			require.LessOrEqual(t, next, uint64(len(model)))
			it.Close()
		case r < 76:
			ops[opTruncateFront]++
			before := start + rng.Uint64N(readable()-start+1)
			require.NoError(t, l.TruncateFront(before))
			start = max(start, before)
			require.Equal(t, start, l.StartOffset())
		case r < 80:
			ops[opTruncateBack]++
			from := start + rng.Uint64N(uint64(len(model))-start+1)
			require.NoError(t, l.TruncateBack(from))
			model, batchOf = model[:from], batchOf[:from]
		case r < 83:
			ops[opSeekTime]++
			end := readable()
			if end == start {
				continue
			}
			off := start + rng.Uint64N(end-start)
			it := l.NewIterator(off)
			require.True(t, it.Next())
			ts := it.Time()
			it.Close()
			got, err := l.SeekTime(ts)
			require.NoError(t, err)
			require.Equal(t, max(start, batchOf[off]), got, "SeekTime(time of record %d)", off)
		case r < 86:
			ops[opRoll]++
			require.NoError(t, l.Roll())
			start = max(start, l.StartOffset())
		case r < 90:
			ops[opSync]++
			require.NoError(t, l.Sync())
		case r < 95:
			ops[opReopen]++
			require.NoError(t, l.Close())
			l = open()
		default:
			ops[opCrash]++
			durable := l.DurableOffset()
			dir = dir.Crash([]blockdev.CrashMode{blockdev.CrashTear, blockdev.CrashDropUnsynced}[rng.IntN(2)])
			l.Close() // fails: its devices are gone
			l = open()
			// What was durable survives; of the rest, whole batches from
			// the front may (SyncAlways: all of it was durable).
			end := l.EndOffset()
			require.GreaterOrEqual(t, end, durable, "durable records lost in the crash")
			require.LessOrEqual(t, end, uint64(len(model)), "records appear after the crash")
			require.True(t, end == uint64(len(model)) || batchOf[end] == end, "the crash kept part of a batch")
			model, batchOf = model[:end], batchOf[:end]
		}
		require.Equal(t, uint64(len(model)), l.EndOffset(), "step %d", step)
		if opts.SyncMode == SyncAlways {
			require.Equal(t, uint64(len(model)), l.DurableOffset(), "step %d", step)
		} else {
			require.LessOrEqual(t, l.DurableOffset(), uint64(len(model)), "step %d", step)
		}
		require.Equal(t, start, l.StartOffset(), "step %d", step)
	}
	_, err := l.Read(uint64(len(model)), nil)
	require.True(t, errors.Is(err, ErrOutOfRange), "reading at the end: %v", err)
	require.NoError(t, l.Close())
}
