package peer

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
)

// simLog opens a log on the simulated directory d, with openLog's options.
func simLog(t *testing.T, d blockdev.Dir) *engine.Log {
	t.Helper()
	l, err := openSim(d)
	require.NoError(t, err)
	return l
}

// openSim is simLog's open, which may fail.
func openSim(d blockdev.Dir) (*engine.Log, error) {
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.Logger, opts.Dir = 256<<10, 64<<10, quiet, d
	return engine.Open("sim", opts)
}

// crashAtSync is a stage's file that crashes its directory when it is
// next synced, before the sync.
type crashAtSync struct {
	blockdev.PlainFile
	crash func()
}

func (c crashAtSync) Sync() error {
	c.crash()
	return c.PlainFile.Sync()
}

// TestStageOnASimDirKeepsTheSyncedStart stages the start of a segment
// in a follower log's simulated directory, in two appends, and crashes
// the directory just before the second append's sync or just after it:
// the stage opened on what the crash left holds exactly the bytes synced
// (or, where the crash keeps unsynced writes, whole frames of what was
// written after them, never a torn one), and the log opened there leaves
// it alone.
func TestStageOnASimDirKeepsTheSyncedStart(t *testing.T) {
	leaderDir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	leader := simLog(t, leaderDir)
	defer leader.Close()
	appendBatches(t, leader, 40)
	require.NoError(t, leader.Roll()) // the staged segment is not the first
	appendBatches(t, leader, 20)
	first := leader.Segments()[1].DataEnd
	appendBatches(t, leader, 20)
	active := leader.Segments()[1]
	require.False(t, active.Sealed)
	file := leaderDir.File(active.File).Bytes()[:active.DataEnd]
	part1, part2 := file[:first], file[first:]

	for _, synced := range []bool{false, true} {
		for _, mode := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
			what := fmt.Sprintf("crash mode %d, after the sync %v", mode, synced)
			d := blockdev.NewSimDir(blockdev.SimOptions{Seed: uint64(mode) + 7})
			follower := simLog(t, d)
			st, err := openStage(follower.Files())
			require.NoError(t, err, what)
			require.NoError(t, st.start(active.Base), what)
			require.NoError(t, st.append(bytes.NewReader(part1), int64(len(part1))), what)

			var crashed *blockdev.SimDir
			crash := func() { crashed = d.Crash(mode) }
			if synced {
				require.NoError(t, st.append(bytes.NewReader(part2), int64(len(part2))), what)
				crash()
			} else {
				st.f = crashAtSync{PlainFile: st.f, crash: crash}
				require.ErrorIs(t, st.append(bytes.NewReader(part2), int64(len(part2))), blockdev.ErrCrashed, what)
			}
			st.f.Close()
			follower.Close() // its devices fail since the crash

			again := simLog(t, crashed)
			st, err = openStage(again.Files())
			require.NoError(t, err, what)
			assert.Equal(t, active.Base, st.base, what)
			switch {
			case synced:
				assert.Equal(t, int64(len(file)), st.size, "%s: every synced byte is kept", what)
			case mode == blockdev.CrashDropUnsynced:
				assert.Equal(t, int64(len(part1)), st.size, "%s: exactly the synced bytes are kept", what)
			default:
				assert.GreaterOrEqual(t, st.size, int64(len(part1)), "%s: the synced bytes are kept", what)
			}
			require.LessOrEqual(t, st.size, int64(len(file)), what)
			assert.Equal(t, file[:st.size], crashed.File(StageFile).Bytes(), "%s: the stage holds its verified start, and nothing after it", what)
			require.NoError(t, st.remove(), what)
			require.NoError(t, again.Close(), what)
		}
	}
}

// TestFollowOnASimDir follows a real leader into a log on a simulated
// directory: the active segment is staged there, then imported from the
// stage once the leader seals it (and the next sealed segment after it),
// or promoted.
func TestFollowOnASimDir(t *testing.T) {
	for _, promote := range []bool{false, true} {
		t.Run(fmt.Sprintf("promote=%v", promote), func(t *testing.T) {
			leader := openLog(t, t.TempDir())
			defer leader.Close()
			appendBatches(t, leader, 30)
			active := leader.Segments()[0]
			require.False(t, active.Sealed)
			addr, stopServer := server(t, "127.0.0.1:0", leader)
			defer stopServer()
			d := blockdev.NewSimDir(blockdev.SimOptions{Seed: 3})
			follower := simLog(t, d)
			defer follower.Close()

			lastStats.Store(nil)
			stop := follow("http://"+addr, follower)
			waitFor(t, "the follower to stage the active segment", func() bool {
				s := lastStats.Load()
				return s != nil && s.Staged == active.ExportSize()
			})
			file, err := os.ReadFile(filepath.Join(leader.Dir(), active.File))
			require.NoError(t, err)
			assert.Equal(t, file[:active.ExportSize()], d.File(StageFile).Bytes(), "staged byte for byte")
			end := active.Next
			if promote {
				require.ErrorIs(t, stop(), context.Canceled)
				added, err := Promote(follower)
				require.NoError(t, err)
				assert.Equal(t, active.Next-active.Base, added)
				assert.Nil(t, d.File(StageFile), "the stage is removed")
			} else {
				require.NoError(t, leader.Roll())
				waitFor(t, "the follower to import the sealed segment", func() bool { return follower.EndOffset() == end })
				// The next segment follows the one imported only once the
				// follower's view of that one (on the SimDir) matches the
				// leader's file.
				appendBatches(t, leader, 10)
				require.NoError(t, leader.Roll())
				end = leader.EndOffset()
				waitFor(t, "the follower to import the next sealed segment", func() bool { return follower.EndOffset() == end })
				require.ErrorIs(t, stop(), context.Canceled)
				for _, s := range leader.Segments()[:2] {
					file, err = os.ReadFile(filepath.Join(leader.Dir(), s.File))
					require.NoError(t, err)
					assert.Equal(t, file, d.File(s.File).Bytes(), "%s imported byte for byte", s.File)
				}
			}
			require.Equal(t, end, follower.EndOffset())
			for _, off := range []uint64{active.Base, end - 1} {
				want, err := leader.Read(off, nil)
				require.NoError(t, err)
				got, err := follower.Read(off, nil)
				require.NoError(t, err)
				assert.Equal(t, want, got, "offset %d", off)
			}
		})
	}
}

// plainless is a directory without the optional capabilities: it opens
// no file through the page cache.
type plainless struct{ blockdev.Dir }

// TestFollowNeedsAPlainOpener: a log on a directory that opens no files
// through the page cache can neither follow nor promote, and is told
// why.
func TestFollowNeedsAPlainOpener(t *testing.T) {
	l := simLog(t, plainless{blockdev.NewSimDir(blockdev.SimOptions{})})
	defer l.Close()
	err := Follow(context.Background(), "http://127.0.0.1:1", l, FollowOptions{Name: "main", Logger: quiet})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "opens no files that way")
	assert.Contains(t, err.Error(), StageFile)
	_, err = Promote(l)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "opens no files that way")
}

// TestStageLeftShortKeepsOnlyTheLeadersBytes opens a stage that an
// earlier run left holding the first n bytes of a leader's active segment
// (a body cut short, then a restart), for every n up to past the first
// frames: the stage keeps a start of what it held, byte for byte, and
// never grows (a start that ends inside the header block was extended
// with zeros over the leader's high-water mark, and the segment imported
// from it differed from the leader's at byte 512).
func TestStageLeftShortKeepsOnlyTheLeadersBytes(t *testing.T) {
	leaderDir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	leader := simLog(t, leaderDir)
	defer leader.Close()
	appendBatches(t, leader, 3)
	active := leader.Segments()[0]
	file := leaderDir.File(active.File).Bytes()[:active.DataEnd]
	for n := 0; n <= len(file); n++ {
		d := blockdev.NewSimDir(blockdev.SimOptions{})
		f, err := d.OpenPlain(StageFile, os.O_RDWR|os.O_CREATE)
		require.NoError(t, err)
		_, err = f.WriteAt(file[:n], 0)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())

		st, err := openStage(d)
		require.NoError(t, err, "stage of %d bytes", n)
		require.LessOrEqual(t, st.size, int64(n), "a stage of %d bytes", n)
		require.True(t, bytes.Equal(file[:st.size], d.File(StageFile).Bytes()), "a stage of %d bytes keeps a start of the leader's file", n)
		require.NoError(t, st.f.Close())
	}
}
