package peer

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
)

// TestStageCrashAtEveryStep stages a leader's first segment in a
// follower's simulated directory in two tail answers, the second ending
// with the seal, and imports it from the stage, as waitTail does; the
// directory is crashed after every change this takes (each crash mode).
// The follower's log then opens with the segment whole or not at all
// (whole once the import returned), and the stage opened there holds a
// start of the leader's file and nothing else: before the import
// returned, at least every record an append returned as durable.
func TestStageCrashAtEveryStep(t *testing.T) {
	leaderDir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	leader := simLog(t, leaderDir)
	defer leader.Close()
	appendBatches(t, leader, 10)
	first := leader.Segments()[0].DataEnd // a frame boundary
	appendBatches(t, leader, 10)
	require.NoError(t, leader.Roll())
	seg := leader.Segments()[0]
	require.True(t, seg.Sealed)
	file := leaderDir.File(seg.File).Bytes()
	parts := [][]byte{file[:first], file[first:]}

	// run returns whether the import returned, and how many staged bytes
	// an append returned as durable before that.
	run := func(d *blockdev.SimDir) (imported bool, synced int64, err error) {
		opts := engine.DefaultOptions()
		opts.SegmentSize, opts.MaxWrite, opts.Logger, opts.Dir = 256<<10, 64<<10, quiet, d
		follower, err := engine.Open("sim", opts)
		if err != nil {
			return false, 0, err
		}
		defer follower.Close()
		st, err := openStage(follower.Files())
		if err != nil {
			return false, 0, err
		}
		defer st.f.Close()
		if err := st.start(seg.Base); err != nil {
			return false, 0, err
		}
		for _, p := range parts {
			if err := st.append(bytes.NewReader(p), int64(len(p))); err != nil {
				return false, synced, err
			}
			synced = st.size
		}
		r, err := st.reader()
		if err != nil {
			return false, synced, err
		}
		if _, err := follower.ImportSegment(r, seg.Base, st.size); err != nil {
			return false, synced, err
		}
		return true, synced, st.cut(0)
	}
	// The number of changes a whole run takes.
	d := blockdev.NewSimDir(blockdev.SimOptions{Seed: 2})
	before := d.Changes()
	_, _, err := run(d)
	require.NoError(t, err)
	total := d.Changes() - before

	for n := 0; n <= total; n++ {
		for _, mode := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
			what := fmt.Sprintf("crash after %d of %d changes, mode %d", n, total, mode)
			d := blockdev.NewSimDir(blockdev.SimOptions{Seed: uint64(n)*3 + uint64(mode)})
			var imported bool
			var synced int64
			func() {
				d.StopAfter(-1)
				follower := simLog(t, d) // the log's own creation is not swept
				require.NoError(t, follower.Close(), what)
				d.StopAfter(n)
				imported, synced, _ = run(d)
			}()
			crashed := d.Crash(mode)
			again := simLog(t, crashed)
			end := again.EndOffset()
			if imported {
				assert.Equal(t, seg.Next, end, "%s: an import that returned is durable", what)
			} else {
				assert.Contains(t, []uint64{seg.Base, seg.Next}, end, "%s: the segment whole or not at all", what)
			}
			st, err := openStage(again.Files())
			require.NoError(t, err, what)
			assert.LessOrEqual(t, st.size, int64(len(file)), what)
			if !imported {
				// (but the footer: a stage is kept to its last whole frame of
				// records, and asks for the rest again)
				assert.GreaterOrEqual(t, st.size, min(synced, seg.DataEnd), "%s: every staged record an append returned is kept", what)
			}
			if got := crashed.File(StageFile).Bytes(); !bytes.Equal(got, file[:min(len(got), len(file))]) || int64(len(got)) != st.size {
				t.Errorf("%s: the stage holds %d bytes (size %d), not a start of the leader's file", what, len(got), st.size)
			}
			if end == seg.Next {
				got := crashed.File(seg.File).Bytes()
				assert.True(t, bytes.Equal(file, got), "%s: the imported segment is the leader's", what)
			}
			require.NoError(t, st.f.Close(), what)
			require.NoError(t, again.Close(), what)
		}
	}
}
