package peer

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
)

// TestStageCrashAtEveryStep stages a leader's first segment in a
// follower's simulated directory in two tail answers, the second ending
// with the seal, restages its header block and imports it from the
// stage, as waitTail does; the directory is crashed after every change
// this takes (each crash mode). The follower's log then opens with the
// segment whole or not at all (whole once the import returned), and the
// stage opened there holds a start of the leader's file and nothing else:
// before the import returned, at least every record an append returned as
// durable.
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
	sw := stageSweep{
		open: openSim,
		seg:  seg, file: file, staged: file[:wal.DataStart],
		parts: [][]byte{file[:first], file[first:]},
	}
	sw.crashes(t, func(total int, _ [2]int) (int, int) { return 0, total })
}

// TestRestageCrashAtEveryStep: the same with 8 MiB segments, whose
// high-water mark moved after the first tail answer, so the restage
// writes another header block over the staged one: a crash around it
// leaves the old block or the new one, never a mix the import takes.
func TestRestageCrashAtEveryStep(t *testing.T) {
	leaderDir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	leader, err := openBigSegments("sim", leaderDir)
	require.NoError(t, err)
	defer leader.Close()
	appendBytes(t, leader, 64<<10)
	require.NoError(t, leader.Sync())
	first := leader.Segments()[0].DataEnd
	oldStart := bytes.Clone(leaderDir.File(leader.Segments()[0].File).Bytes()[:first])
	appendBytes(t, leader, 3<<20)
	require.NoError(t, leader.Roll())
	seg := leader.Segments()[0]
	require.True(t, seg.Sealed)
	file := bytes.Clone(leaderDir.File(seg.File).Bytes())
	require.NotEqual(t, oldStart[:wal.DataStart], file[:wal.DataStart], "the mark moved")
	sw := stageSweep{
		open: func(d blockdev.Dir) (*engine.Log, error) { return openBigSegments("sim", d) },
		seg:  seg, file: file, staged: oldStart[:wal.DataStart],
		parts: [][]byte{oldStart, file[first:]},
	}
	// The appends of 3 MiB are swept by the test above: here the changes
	// around the restage.
	sw.crashes(t, func(total int, restage [2]int) (int, int) {
		return max(0, restage[0]-3), min(total, restage[1]+3)
	})
}

// stageSweep is a leader's sealed segment as a follower stages, restages
// and imports it.
type stageSweep struct {
	open   func(d blockdev.Dir) (*engine.Log, error) // the follower's log
	seg    engine.SegmentInfo
	file   []byte   // the leader's sealed file
	staged []byte   // the header block the tail answers carry: the file's, or an older one
	parts  [][]byte // the tail answers
}

// run stages the parts in d, restages the header block and imports the
// stage, as waitTail does. It returns whether the import returned, how
// many staged bytes an append returned as durable before that, and the
// changes of d the restage began and ended at.
func (sw stageSweep) run(d *blockdev.SimDir) (imported bool, synced int64, restage [2]int, err error) {
	follower, err := sw.open(d)
	if err != nil {
		return false, 0, restage, err
	}
	defer follower.Close()
	st, err := openStage(follower.Files())
	if err != nil {
		return false, 0, restage, err
	}
	defer st.f.Close()
	if err := st.start(sw.seg.Base); err != nil {
		return false, 0, restage, err
	}
	for _, p := range sw.parts {
		if err := st.append(bytes.NewReader(p), int64(len(p))); err != nil {
			return false, synced, restage, err
		}
		synced = st.size
	}
	restage[0] = d.Changes()
	if err := st.overwrite(bytes.NewReader(sw.file[:wal.DataStart]), wal.DataStart); err != nil {
		return false, synced, restage, err
	}
	restage[1] = d.Changes()
	r, err := st.reader()
	if err != nil {
		return false, synced, restage, err
	}
	if _, err := follower.ImportSegment(r, sw.seg.Base, st.size); err != nil {
		return false, synced, restage, err
	}
	return true, synced, restage, st.cut(0)
}

// crashes crashes run after each change, of those window picks from a
// whole run's (their number, and where the restage began and ended), in
// each crash mode, and checks what the follower holds after each crash.
func (sw stageSweep) crashes(t *testing.T, window func(total int, restage [2]int) (lo, hi int)) {
	d := blockdev.NewSimDir(blockdev.SimOptions{Seed: 2})
	before := d.Changes()
	imported, _, restage, err := sw.run(d)
	require.NoError(t, err)
	require.True(t, imported)
	total := d.Changes() - before
	lo, hi := window(total, [2]int{restage[0] - before, restage[1] - before})
	seg, file := sw.seg, sw.file
	for n := lo; n <= hi; n++ {
		for _, mode := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
			what := fmt.Sprintf("crash after %d of %d changes, mode %d", n, total, mode)
			d := blockdev.NewSimDir(blockdev.SimOptions{Seed: uint64(n)*3 + uint64(mode)})
			var imported bool
			var synced int64
			func() {
				d.StopAfter(-1)
				follower, err := sw.open(d) // the log's own creation is not swept
				require.NoError(t, err, what)
				require.NoError(t, follower.Close(), what)
				d.StopAfter(n)
				imported, synced, _, _ = sw.run(d)
			}()
			crashed := d.Crash(mode)
			again, err := sw.open(crashed)
			require.NoError(t, err, what)
			end := again.EndOffset()
			if imported {
				assert.Equal(t, seg.Next, end, "%s: an import that returned is durable", what)
			} else {
				assert.Contains(t, []uint64{seg.Base, seg.Next}, end, "%s: the segment whole or not at all", what)
			}
			st, err := openStage(again.Files())
			require.NoError(t, err, what)
			if !imported {
				// (but the footer: a stage is kept to its last whole frame of
				// records, and asks for the rest again)
				assert.GreaterOrEqual(t, st.size, min(synced, seg.DataEnd), "%s: every staged record an append returned is kept", what)
			}
			// A start of the leader's file, its header block the staged one
			// or the sealed file's.
			got := crashed.File(StageFile).Bytes()
			ok := int64(len(got)) == st.size && len(got) <= len(file)
			if hb := min(len(got), wal.DataStart); ok {
				ok = bytes.Equal(got[hb:], file[hb:len(got)]) &&
					(bytes.Equal(got[:hb], file[:hb]) || bytes.Equal(got[:hb], sw.staged[:hb]))
			}
			if !ok {
				t.Errorf("%s: the stage holds %d bytes (size %d), not a start of the leader's file", what, len(got), st.size)
			}
			if end == seg.Next {
				assert.True(t, bytes.Equal(file, crashed.File(seg.File).Bytes()), "%s: the imported segment is the leader's", what)
			}
			require.NoError(t, st.f.Close(), what)
			require.NoError(t, again.Close(), what)
		}
	}
}
