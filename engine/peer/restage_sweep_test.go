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

// TestRestageCrashAtEveryStep: TestStageCrashAtEveryStep with the
// restaged header block: the stage's first answer carries an older
// high-water mark than the sealed file; the header block is overwritten
// (stage.overwrite) before the import. A crash after any change leaves a
// log with the segment whole or absent, and a stage holding a start of
// the leader's file (its header block the old or the new one) with every
// record an append returned.
func TestRestageCrashAtEveryStep(t *testing.T) {
	leaderDir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	big := func(d blockdev.Dir) *engine.Log {
		l, err := openBigSegments("sim", d)
		require.NoError(t, err)
		return l
	}
	leader := big(leaderDir)
	defer leader.Close()
	appendBytes(t, leader, 64<<10)
	require.NoError(t, leader.Sync())
	seg0 := leader.Segments()[0]
	first := seg0.DataEnd
	oldStart := bytes.Clone(leaderDir.File(seg0.File).Bytes()[:first])
	appendBytes(t, leader, 3<<20)
	require.NoError(t, leader.Roll())
	seg := leader.Segments()[0]
	require.True(t, seg.Sealed)
	file := bytes.Clone(leaderDir.File(seg.File).Bytes())
	require.NotEqual(t, oldStart[:wal.DataStart], file[:wal.DataStart], "the mark moved")
	parts := [][]byte{oldStart, file[first:]}

	var owFrom, owTo int
	run := func(d *blockdev.SimDir) (imported bool, synced int64, err error) {
		follower, err := openBigSegments("sim", d)
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
		owFrom = d.Changes()
		if err := st.overwrite(bytes.NewReader(file[:wal.DataStart]), wal.DataStart); err != nil {
			return false, synced, err
		}
		owTo = d.Changes()
		r, err := st.reader()
		if err != nil {
			return false, synced, err
		}
		if _, err := follower.ImportSegment(r, seg.Base, st.size); err != nil {
			return false, synced, err
		}
		return true, synced, st.cut(0)
	}
	d := blockdev.NewSimDir(blockdev.SimOptions{Seed: 2})
	before := d.Changes()
	imported, _, err := run(d)
	require.NoError(t, err)
	require.True(t, imported)
	total := d.Changes() - before
	from, to := owFrom-before, owTo-before
	t.Logf("%d changes, the overwrite's %d to %d", total, from, to)

	for n := max(0, from-3); n <= min(total, to+3); n++ {
		for _, mode := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
			what := fmt.Sprintf("crash after %d of %d changes, mode %d", n, total, mode)
			d := blockdev.NewSimDir(blockdev.SimOptions{Seed: uint64(n)*3 + uint64(mode)})
			var imported bool
			var synced int64
			func() {
				d.StopAfter(-1)
				require.NoError(t, big(d).Close(), what)
				d.StopAfter(n)
				imported, synced, _ = run(d)
			}()
			crashed := d.Crash(mode)
			again := big(crashed)
			end := again.EndOffset()
			if imported {
				assert.Equal(t, seg.Next, end, what)
			} else {
				assert.Contains(t, []uint64{seg.Base, seg.Next}, end, what)
			}
			st, err := openStage(again.Files())
			require.NoError(t, err, what)
			if !imported {
				assert.GreaterOrEqual(t, st.size, min(synced, seg.DataEnd), "%s: every staged record kept", what)
			}
			got := crashed.File(StageFile).Bytes()
			ok := int64(len(got)) == st.size && len(got) <= len(file)
			if ok && len(got) > 0 {
				hb := min(len(got), wal.DataStart)
				ok = bytes.Equal(got[hb:], file[hb:len(got)]) &&
					(bytes.Equal(got[:hb], file[:hb]) || bytes.Equal(got[:hb], oldStart[:hb]))
			}
			if !ok {
				t.Errorf("%s: the stage holds %d bytes (size %d), not a start of the leader's file", what, len(got), st.size)
				for i := 0; i < min(len(got), wal.DataStart); i += 512 {
					t.Logf("sector %d: = new %v, = old %v, zero %v", i/512, bytes.Equal(got[i:i+512], file[i:i+512]), bytes.Equal(got[i:i+512], oldStart[i:i+512]), bytes.Count(got[i:i+512], []byte{0}) == 512)
				}
			}
			if end == seg.Next {
				assert.True(t, bytes.Equal(file, crashed.File(seg.File).Bytes()), "%s: the imported segment is the leader's", what)
			}
			require.NoError(t, st.f.Close(), what)
			require.NoError(t, again.Close(), what)
		}
	}
}
