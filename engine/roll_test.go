package engine

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// TestRollIsOffTheAppendPath counts what each append waits for around a
// roll, in every sync mode, with and without preallocated (spare) files:
//   - the append that fills the segment makes its own frame durable (one
//     write and one fdatasync in SyncAlways mode; in the others the
//     writer's goroutine writes the segment meanwhile, and nothing else
//     happens) and returns: the roll runs in a goroutine of its own (held
//     at its start here, so nothing of it can be on the append's path);
//   - the roll's part that appends wait for, until the next segment takes
//     them, is its creation: the spare's rename (or the file's creation),
//     the header's write and one fdatasync, and the directory fsync;
//   - with the old segment not sealed yet (the roll held there), an append
//     to the next one again pays only its own frame, and reads, iterators
//     and a reopen see every record; then the seal, the manifest and
//     retention run, and the old segment is sealed.
func TestRollIsOffTheAppendPath(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncNever} {
		for _, prealloc := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v/prealloc=%v", mode, prealloc), func(t *testing.T) {
				dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
				o := testOptions(dir)
				o.SyncMode, o.NoPreallocate = mode, !prealloc
				o.SyncInterval = MinSyncInterval * 1000 // no tick during the test
				l, err := Open("sim", o)
				require.NoError(t, err)
				started, goOn := make(chan struct{}), make(chan struct{})
				cut, finish := make(chan struct{}), make(chan struct{})
				l.rollHook = func(step string) {
					switch step {
					case "start":
						close(started)
						<-goOn
					case "cut":
						close(cut)
						<-finish
					}
				}
				// ownFrames checks that ops are what an append of a frame to
				// the segment file seg does.
				ownFrames := func(ops []string, seg, what string) {
					t.Helper()
					// The spare's preparation, started by the append that
					// crossed half the segment, runs in a goroutine too.
					ops = slices.DeleteFunc(ops, func(op string) bool { return strings.HasSuffix(op, " sim:"+spareName) })
					if mode == SyncAlways {
						require.Equal(t, []string{"write sim:" + seg, "sync sim:" + seg}, ops, what)
						return
					}
					for _, op := range ops { // the writer's goroutine, flushing
						require.Contains(t, []string{"write sim:" + seg, "sync sim:" + seg}, op, what)
					}
				}
				var ops []string
				for l.rolling.Load() == nil {
					waitSpare(l) // its preparation is not on the append path either, but goes on beside it
					n := dir.Changes()
					appendOff(t, l, 1, 3000)
					ops = dir.ChangesSince(n)
					if l.rolling.Load() == nil {
						ownFrames(ops, segName(0), "an append that does not roll")
					}
				}
				ownFrames(ops, segName(0), "the append that triggered the roll pays only for its own frame")
				<-started
				full := l.EndOffset()
				require.Len(t, l.Segments(), 1, "nothing of the roll has happened yet")

				n := dir.Changes()
				close(goOn)
				<-cut
				next := segName(full)
				creation := []string{"rename sim:spare.tmp", "write sim:" + next, "sync sim:" + next, "sync sim"}
				if !prealloc {
					creation = []string{"create sim:" + next, "write sim:" + next, "sync sim:" + next, "sync sim"}
				}
				ops = dir.ChangesSince(n)
				if mode != SyncAlways {
					// The old segment's buffered records are made durable
					// first (the next segment's must never be durable after
					// a gap in them): its sync is the roll's first change.
					k := 0
					for k < len(ops) && strings.HasSuffix(ops[k], segName(0)) {
						k++
					}
					require.Greater(t, k, 0, "the old segment is synced before the next one is made")
					require.Equal(t, "sync sim:"+segName(0), ops[k-1], "the old segment is synced before the next one is made")
					ops = ops[k:]
				}
				require.Equal(t, creation, ops, "what appends wait for during a roll")

				segs := l.Segments()
				require.Len(t, segs, 2)
				require.False(t, segs[0].Sealed, "held before its seal")
				n = dir.Changes()
				appendOff(t, l, 1, 3000)
				ownFrames(dir.ChangesSince(n), next, "an append beside the unsealed old segment pays only for its own frame")
				require.NoError(t, l.syncActive()) // Sync would wait for the roll held here
				requireOffRecords(t, l, 0, full+1, 3000)

				close(finish)
				settle(l)
				segs = l.Segments()
				require.True(t, segs[0].Sealed, "sealed once the roll is done")
				ops = dir.ChangesSince(n)
				require.Contains(t, strings.Join(ops, ","), "rename sim:MANIFEST.tmp", "the manifest is written after the seal")
				require.NoError(t, l.Close())

				l, err = Open("sim", o)
				require.NoError(t, err)
				require.Equal(t, full+1, l.EndOffset())
				require.Equal(t, 1, l.report.Deferred, "the manifest written by the roll holds the sealed segment")
				requireOffRecords(t, l, 0, full+1, 3000)
				require.NoError(t, l.Close())
			})
		}
	}
}

// TestSpareZeroingIsPaced: the next segment's file is zeroed a piece at a
// time as the active segment fills, never more than spareLead times what
// was appended since its preparation began (plus the piece being
// written), so appends never find tens of MiB of zeros queued before
// their fdatasync; the roll takes the spare, finishing its zeroing at once
// if the appends outran it, and the spare holds zeros only.
func TestSpareZeroingIsPaced(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	o := testOptions(dir)
	o.SegmentSize, o.MaxWrite = 2<<20, 64<<10
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	var start int64 = -1 // where the active segment was when the spare began
	zeroed := 0          // zero writes to the spare seen so far
	seen := dir.Changes()
	for len(l.Segments()) == 1 {
		appendOff(t, l, 1, 3000)
		if start < 0 {
			l.spareMu.Lock()
			if l.spare != nil {
				start = l.active.vis().pos
			}
			l.spareMu.Unlock()
		}
		for _, op := range dir.ChangesSince(seen) {
			if op == "write sim:"+spareName {
				zeroed++
			}
		}
		seen = dir.Changes()
		if start >= 0 && l.rolling.Load() == nil && len(l.Segments()) == 1 { // no roll has hurried it
			appended := l.active.vis().pos - start
			require.LessOrEqual(t, int64(zeroed)*wal.ZeroChunk, spareLead*appended+wal.ZeroChunk,
				"zeros written ahead of the appends (%d bytes appended since the spare began)", appended)
		}
	}
	require.NotEqual(t, -1, start, "the spare was begun")
	settle(l)
	require.NoError(t, l.Close())
	l, err = Open("sim", o)
	require.NoError(t, err)
	require.Len(t, l.Segments(), 2)
	require.Equal(t, []uint64(nil), l.report.RemovedIncomplete)
}

// TestRollsReuseTheWriteBuffers: a log that rolls through ten segments,
// each roll done before the next, allocates four write buffers in all
// (the active writer's two and a retired one's two, until its seal hands
// them on); a new segment's first appends take the buffers of one
// retired before.
func TestRollsReuseTheWriteBuffers(t *testing.T) {
	l, err := Open("sim", testOptions(blockdev.NewSimDir(blockdev.SimOptions{})))
	require.NoError(t, err)
	defer l.Close()
	for len(l.Segments()) < 10 {
		appendN(t, l, 20)
		l.bg.Wait() // the roll it started is done, seal and all
	}
	require.Positive(t, l.bufs.Allocs(), "the writers take their buffers from the log's")
	require.LessOrEqual(t, l.bufs.Allocs(), int64(4), "write buffers allocated over %d segments", len(l.Segments()))
}

// TestWriteBuffersAfterMaxWriteChanged: a log reopened with another
// MaxWrite resumes its active segment with the MaxWrite of its file; once
// that writer's seal hands its two buffers of the old size back, the
// rolls that follow still reuse buffers of the new size (at most four
// allocations for them, besides the old writer's two), and Close lets
// every free buffer go (a closed log held four of them).
func TestWriteBuffersAfterMaxWriteChanged(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	appendN(t, l, 5)
	require.NoError(t, l.Close())

	opts := testOptions(dir)
	opts.MaxWrite = 64 << 10
	l, err = Open("sim", opts)
	require.NoError(t, err)
	defer l.Close()
	for len(l.Segments()) < 10 {
		appendN(t, l, 20)
		l.bg.Wait() // the roll it started is done, seal and all
	}
	require.LessOrEqual(t, l.bufs.Allocs(), int64(2+4), "write buffers allocated over %d segments", len(l.Segments()))
	require.Positive(t, l.bufs.Kept(), "free buffers between rolls")
	require.NoError(t, l.Close())
	require.Zero(t, l.bufs.Kept(), "bytes of write buffers a closed log holds")
}
