package engine

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// TestOpenAfterCrashReadsUpToTheHighWaterMark: after a crash of a log
// whose active segment is a preallocated 64 MiB file holding 1 MiB of
// records, open reads the records, MaxWrite and the mark's step (the
// active segment's proof of its end stops at its high-water mark), not the
// 64 MiB, and says so in its report.
func TestOpenAfterCrashReadsUpToTheHighWaterMark(t *testing.T) {
	sim := blockdev.NewSimDir(blockdev.SimOptions{})
	o := testOptions(sim)
	o.SegmentSize, o.MaxWrite, o.IndexInterval, o.NoPreallocate = 64<<20, 4<<20, 64<<10, false
	l, err := Open("sim", o)
	require.NoError(t, err)
	for l.Segments()[0].DataEnd < 1<<20 {
		appendOff(t, l, 16, 4000)
	}
	end := l.EndOffset()
	dataEnd := l.Segments()[0].DataEnd
	crashed := sim.Crash(blockdev.CrashDropUnsynced) // the process died: no clean close
	l.Close()

	d := &countingDir{Dir: crashed}
	l, err = Open("sim", testOptionsLike(o, d))
	require.NoError(t, err)
	defer l.Close()
	rec := l.Stats().LastOpenRecovery
	require.False(t, rec.CleanEnd)
	require.Equal(t, end, l.EndOffset())
	require.Positive(t, rec.ActiveFrames)
	bound := dataEnd + int64(o.MaxWrite) + wal.HighWaterStep + 64<<10
	require.Positive(t, rec.ActiveRead)
	require.LessOrEqual(t, rec.ActiveRead, bound, "the active segment's scan")
	require.LessOrEqual(t, d.bytes.Load(), bound+64<<10, "everything open read")
	t.Logf("data ends at %d: open read %d bytes (the active segment's scan %d in %v), bound %d", dataEnd, d.bytes.Load(), rec.ActiveRead, rec.ActiveScan, bound)
	requireOffRecords(t, l, end-20, end, 4000)
}

// testOptionsLike is o on another directory.
func testOptionsLike(o Options, dir blockdev.Dir) Options {
	o.Dir = dir
	return o
}
