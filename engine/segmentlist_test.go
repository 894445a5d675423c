package engine

import (
	"bytes"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// listLog is a log of modelRec records on a simulated directory, filled
// until it has sealed sealed segments and more records in its active one.
func listLog(t *testing.T, o Options, sealed int) (*blockdev.SimDir, *Log) {
	t.Helper()
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	o.Dir = d
	l, err := Open("sim", o)
	require.NoError(t, err)
	appendOne := func() {
		_, err := l.Append(modelRec(int(l.EndOffset())))
		require.NoError(t, err)
	}
	for len(l.Segments()) <= sealed {
		appendOne()
	}
	for range 5 {
		appendOne()
	}
	return d, l
}

// segmentBytes is what a leader exports of segment si: all of a sealed
// one, the durable start of the active one.
func segmentBytes(t *testing.T, d *blockdev.SimDir, si SegmentInfo) []byte {
	t.Helper()
	b := d.File(si.File).Bytes()
	if !si.Sealed {
		b = b[:si.ExportSize()]
	}
	return bytes.Clone(b)
}

// requireListHeld checks the segment-list rule after a change failed: a
// listed segment is held by the list and not gone, the active segment is
// the last listed, and a segment that was listed before and is not now
// was let go of exactly once.
func requireListHeld(t *testing.T, what string, l *Log, before []*segment) {
	t.Helper()
	segs := *l.segs.Load()
	for _, s := range segs {
		require.False(t, s.gone.Load(), "%s: listed segment %s is marked gone", what, s.name)
		require.GreaterOrEqual(t, s.refs.Load(), int64(1), "%s: listed segment %s was let go of", what, s.name)
	}
	l.mu.RLock()
	active := l.active
	l.mu.RUnlock()
	if active != nil {
		require.Same(t, segs[len(segs)-1], active, "%s: the active segment is not the last listed", what)
	}
	for _, s := range before {
		if !slices.Contains(segs, s) {
			require.True(t, s.gone.Load(), "%s: segment %s left the list but is not marked gone", what, s.name)
			require.Zero(t, s.refs.Load(), "%s: segment %s left the list with %d references (1: leaked, -1: let go of twice)", what, s.name, s.refs.Load())
		}
	}
}

// requireModelRecords checks that every record l shows, read by offset
// and by an iterator, is modelRec's; errors are allowed (the log may
// have stopped), wrong bytes are not.
func requireModelRecords(t *testing.T, what string, l *Log) {
	t.Helper()
	for off := l.StartOffset(); off < l.EndOffset(); off++ {
		if rec, err := l.Read(off, nil); err == nil {
			require.Equal(t, modelRec(int(off)), rec, "%s: read %d", what, off)
		}
	}
	it := l.NewIterator(l.StartOffset())
	for it.Next() {
		require.Equal(t, modelRec(int(it.Offset())), it.Record(), "%s: iterator at %d", what, it.Offset())
	}
	_ = it.Close()
}

// TestAChangeFailingAtEveryStepKeepsTheSegmentList: every change of the
// segment list (a roll, with and without retention; TruncateBack inside a
// segment and to a segment's start; TruncateFront; ImportSegment;
// ImportActive) is failed at each of its steps in turn (the directory
// refuses every change after the first n). After each failure every
// listed segment is still held and the active one is the last listed,
// every segment the change removed from the list was let go of once
// (none leaked, none let go of twice: after Close no segment holds a
// reference), the records shown are the right ones, and the directory
// opens again with the right records.
func TestAChangeFailingAtEveryStepKeepsTheSegmentList(t *testing.T) {
	leaderDir, leader := listLog(t, testOptions(nil), 1)
	defer leader.Close()
	require.NoError(t, leader.Sync())
	exported := leader.Segments()
	sealed, active := segmentBytes(t, leaderDir, exported[0]), segmentBytes(t, leaderDir, exported[1])

	// Retention by age, on a clock the change moves past every sealed
	// segment's age (by size, the fill would never get past one segment).
	var clock atomic.Int64
	retention := testOptions(nil)
	retention.RetentionAge = time.Hour
	retention.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	type change struct {
		name  string
		opts  Options
		setup func(t *testing.T, o Options) (*blockdev.SimDir, *Log)
		do    func(l *Log) error
		after func(t *testing.T, l *Log) // checks the change once it succeeds
	}
	filled := func(t *testing.T, o Options) (*blockdev.SimDir, *Log) {
		clock.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
		return listLog(t, o, 3)
	}
	empty := func(t *testing.T, o Options) (*blockdev.SimDir, *Log) {
		d := blockdev.NewSimDir(blockdev.SimOptions{})
		o.Dir = d
		l, err := Open("sim", o)
		require.NoError(t, err)
		return d, l
	}
	var want uint64 // where a change that succeeded leaves the log's end (or start)
	changes := []change{
		{"roll", testOptions(nil), filled, func(l *Log) error { return l.Roll() }, func(t *testing.T, l *Log) {
			require.Len(t, l.Segments(), 5)
		}},
		{"roll with retention", retention, filled, func(l *Log) error {
			clock.Add(int64(2 * time.Hour))
			return l.Roll()
		}, func(t *testing.T, l *Log) {
			require.Len(t, l.Segments(), 2, "retention dropped every segment older than the clock's move")
		}},
		{"TruncateBack inside a segment", testOptions(nil), filled, func(l *Log) error {
			want = l.Segments()[1].Base + 3
			return l.TruncateBack(want)
		}, func(t *testing.T, l *Log) {
			require.Equal(t, want, l.EndOffset())
		}},
		{"TruncateBack to a segment's start", testOptions(nil), filled, func(l *Log) error {
			want = l.Segments()[1].Base
			return l.TruncateBack(want)
		}, func(t *testing.T, l *Log) {
			require.Equal(t, want, l.EndOffset())
		}},
		{"TruncateFront", testOptions(nil), filled, func(l *Log) error {
			want = l.Segments()[2].Base
			return l.TruncateFront(want)
		}, func(t *testing.T, l *Log) {
			require.Equal(t, want, l.StartOffset())
			require.Len(t, l.Segments(), 2)
		}},
		{"ImportSegment", testOptions(nil), empty, func(l *Log) error {
			_, err := l.ImportSegment(bytes.NewReader(sealed), exported[0].Base, int64(len(sealed)))
			return err
		}, func(t *testing.T, l *Log) {
			require.Equal(t, exported[0].Next, l.EndOffset())
		}},
		{"ImportActive", testOptions(nil), func(t *testing.T, o Options) (*blockdev.SimDir, *Log) {
			d, l := empty(t, o)
			_, err := l.ImportSegment(bytes.NewReader(sealed), exported[0].Base, int64(len(sealed)))
			require.NoError(t, err)
			return d, l
		}, func(l *Log) error {
			_, err := l.ImportActive(bytes.NewReader(active), exported[1].Base, int64(len(active)))
			return err
		}, func(t *testing.T, l *Log) {
			require.Equal(t, exported[1].Next, l.EndOffset())
		}},
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			failures := 0
			for n := 0; ; n++ {
				require.Less(t, n, 500, "the change keeps failing")
				d, l := c.setup(t, c.opts)
				before := slices.Clone(*l.segs.Load())
				d.StopAfter(n)
				err := c.do(l)
				d.StopAfter(-1)
				if err == nil {
					c.after(t, l)
					require.NoError(t, l.Close())
					require.Positive(t, failures, "the change failed at no step")
					return
				}
				failures++
				what := fmt.Sprintf("%s failing after %d changes", c.name, n)
				requireListHeld(t, what, l, before)
				requireModelRecords(t, what, l)
				listed := slices.Clone(*l.segs.Load())
				_ = l.Close() // a stopped log reports its failure
				for _, s := range append(before, listed...) {
					require.Zero(t, s.refs.Load(), "%s: after Close, segment %s holds %d references", what, s.name, s.refs.Load())
				}
				o := c.opts
				o.Dir = d
				l, err = Open("sim", o)
				require.NoError(t, err, "%s: the directory opens once it works", what)
				requireModelRecords(t, what+", reopened", l)
				require.NoError(t, l.Close())
			}
		})
	}
}
