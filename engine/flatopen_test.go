package engine

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// TestOpenAfterCleanCloseReadsNoRecords: after a clean close, a read-only
// and a read-write open read the same device bytes whether the active
// segment holds 20 KiB or 1 MiB of records (the metadata files, the last
// segment's header, its footer probe and its end's block; the sealed
// segments are trusted through the manifest): none of its records; and
// they write nothing (the first append removes the record). The
// index and end come from the clean close record; reads work, appends
// extend the index, and the segment seals and reopens with every record.
func TestOpenAfterCleanCloseReadsNoRecords(t *testing.T) {
	opened := map[bool]int64{}
	for _, active := range []int{20 << 10, 1 << 20} {
		sim := blockdev.NewSimDir(blockdev.SimOptions{})
		d := &countingDir{Dir: sim}
		o := testOptions(d)
		o.SegmentSize, o.MaxWrite, o.IndexInterval = 8<<20, 256<<10, 64<<10
		l, err := Open("sim", o)
		require.NoError(t, err)
		appendOff(t, l, 40, 3000)
		require.NoError(t, l.Roll())
		appendOff(t, l, 40, 3000)
		require.NoError(t, l.Roll())
		for l.Segments()[2].DataEnd < int64(active) {
			recs := make([][]byte, 16)
			for k := range recs {
				recs[k] = offRecord(l.EndOffset()+uint64(k), 3000)
			}
			_, err := l.Append(recs...)
			require.NoError(t, err)
		}
		end := l.EndOffset()
		require.NoError(t, l.Close())
		for _, readOnly := range []bool{true, false} { // read-only first: the read-write open removes the record
			ro := o
			ro.ReadOnly = readOnly
			before, changes := d.bytes.Load(), sim.Changes()
			l, err = Open("sim", ro)
			require.NoError(t, err)
			read := d.bytes.Load() - before
			wantChanges := 0
			if !readOnly {
				wantChanges = 1 // the resumed writer's fdatasync of what it found
			}
			assert.Equal(t, wantChanges, sim.Changes()-changes, "open writes nothing")
			rec := l.Stats().LastOpenRecovery
			what := fmt.Sprintf("active segment of %d KiB, read-only %v", active>>10, readOnly)
			assert.True(t, rec.CleanIndex, what)
			assert.Zero(t, rec.ActiveFrames, what)
			assert.Equal(t, 2, rec.Deferred, what)
			if prev, ok := opened[readOnly]; ok {
				assert.Equal(t, prev, read, "%s: open reads the same bytes whatever the active segment holds", what)
			}
			opened[readOnly] = read
			t.Logf("%s: open read %d bytes", what, read)
			require.Equal(t, end, l.EndOffset(), what)
			requireOffRecords(t, l, end-10, end, 3000)
			if !readOnly {
				end = appendOff(t, l, 5, 3000)
				require.NoError(t, l.Roll())
				end = appendOff(t, l, 2, 3000)
			}
			require.NoError(t, l.Close())
		}
		l, err = Open("sim", o)
		require.NoError(t, err)
		requireOffRecords(t, l, 0, end, 3000)
		require.NoError(t, l.Close())
	}
}

// TestCleanCloseRecordAtEveryStep: the clean close record is trusted only
// while nothing was written after it. A log closed cleanly is opened
// read-write and appended to (three batches) and closed again, with the
// simulated directory stopped after every step n of that (the open's
// manifest rewrite, which removes the record, each append's write and
// sync, the close's) and crashed (unsynced writes lost, torn or kept, in
// turn). While the manifest on the device holds the record, its segment
// holds nothing written after it (the first append removes the record,
// durably, before it writes). Reopened, read-only and read-write, the log
// holds every
// acknowledged record and never more than was appended; it was opened
// from the record (CleanIndex) only if nothing was appended or the close
// that wrote a new one completed. With SEGSTORE_LONG=1 every step crashes
// every way.
func TestCleanCloseRecordAtEveryStep(t *testing.T) {
	modes := []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll}
	long := testutil.Long()
	for _, prealloc := range []bool{true, false} {
		setup := func(seed uint64) (*blockdev.SimDir, Options, uint64) {
			dir := blockdev.NewSimDir(blockdev.SimOptions{Seed: seed})
			o := testOptions(dir)
			o.NoPreallocate = !prealloc
			l, err := Open("sim", o)
			require.NoError(t, err)
			for len(l.Segments()) < 2 {
				appendOff(t, l, 1, sweepRecord)
			}
			end := appendOff(t, l, 3, sweepRecord)
			waitSpare(l)
			require.NoError(t, l.Close())
			return dir, o, end
		}
		// run opens, appends three records and closes, the directory
		// stopped after n changes; it returns how many appends were
		// acknowledged and whether the close returned.
		run := func(dir *blockdev.SimDir, o Options, n int) (opened bool, acked int, closed bool) {
			dir.StopAfter(n)
			l, err := Open("sim", o)
			if err != nil {
				return false, 0, false
			}
			for range 3 {
				if _, err := l.Append(offRecord(l.EndOffset(), sweepRecord)); err != nil {
					break
				}
				acked++
			}
			return true, acked, l.Close() == nil
		}
		dir, o, _ := setup(1)
		start := dir.Changes()
		_, acked, closed := run(dir, o, -1)
		require.Equal(t, 3, acked)
		require.True(t, closed)
		steps := dir.Changes() - start
		for n := 0; n <= steps; n++ {
			for i, mode := range modes {
				if !long && (n+i)%len(modes) != 0 {
					continue
				}
				what := fmt.Sprintf("prealloc %v, crash after step %d of %d, mode %d", prealloc, n, steps, mode)
				dir, o, end := setup(uint64(n + 1))
				opened, acked, closed := run(dir, o, n)
				crashed := dir.Crash(mode)
				o.Dir = crashed
				if opened && !closed {
					// The commit point: while the device's manifest holds
					// the record, nothing was written after it.
					b, err := readMeta(crashed, manifestName, metaManifest)
					require.NoError(t, err, what)
					_, clean, err := decodeManifest(b)
					require.NoError(t, err, what)
					if clean != nil {
						requireNothingAfter(t, crashed, clean, what)
					}
				}
				for _, readOnly := range []bool{true, false} {
					ro := o
					ro.ReadOnly = readOnly
					l, err := Open("sim", ro)
					require.NoError(t, err, what)
					got := l.DurableOffset()
					require.GreaterOrEqual(t, got, end+uint64(acked), "%s: acknowledged records lost", what)
					require.LessOrEqual(t, got, end+3, "%s: more records than were appended", what)
					requireOffRecordsSized(t, l, 0, got, what)
					if rec := l.Stats().LastOpenRecovery; rec.CleanIndex {
						require.True(t, got == end && acked == 0 || closed, "%s: opened from a clean close record after appends (end %d, acknowledged %d)", what, got, acked)
					}
					if !readOnly {
						appendOff(t, l, 1, sweepRecord)
						require.NoError(t, l.Close(), what)
						l, err = Open("sim", o)
						require.NoError(t, err, what)
						require.Equal(t, got+1, l.EndOffset(), what)
						require.True(t, l.Stats().LastOpenRecovery.CleanIndex, "%s: a clean close after recovery is trusted", what)
					}
					require.NoError(t, l.Close(), what)
				}
			}
		}
		t.Logf("prealloc %v: %d steps", prealloc, steps)
	}
}

// requireNothingAfter checks that the segment file a clean close record
// describes is as the record says: its size, and zeros after its end.
func requireNothingAfter(t *testing.T, dir blockdev.Dir, clean *cleanEnd, what string) {
	t.Helper()
	dev, err := dir.Open(segName(clean.base), blockdev.Options{ReadOnly: true})
	require.NoError(t, err, what)
	defer dev.Close()
	size, err := dev.Size()
	require.NoError(t, err, what)
	require.Equal(t, clean.size, size, "%s: the file grew after its clean close record", what)
	b := dev.Alignment().Alloc(int(size))
	_, err = dev.ReadAt(b, 0)
	require.NoError(t, err, what)
	for p := clean.end; p < size; p++ {
		if b[p] != 0 {
			require.Failf(t, "written after the clean close record", "%s: byte %d (the record says the records end at %d) is %#x", what, p, clean.end, b[p])
		}
	}
}

// metaCountingDir counts, besides countingDir's device reads and bytes,
// the calls an open makes of the directory itself: files opened and
// sizes asked for (a stat each).
type metaCountingDir struct {
	countingDir
	opens, sizes atomic.Int64
}

func (d *metaCountingDir) Open(name string, opts blockdev.Options) (blockdev.Device, error) {
	d.opens.Add(1)
	return d.countingDir.Open(name, opts)
}

func (d *metaCountingDir) Size(name string) (int64, error) {
	d.sizes.Add(1)
	return d.countingDir.Size(name)
}

// TestOpenAfterCleanCloseIsFlat: after a clean close, an open of a log of
// 4 and of 64 segments makes the same device reads and opens the same
// files, read-only and read-write: a sealed segment costs it its manifest
// entry (56 bytes, read in the same one read of MANIFEST) and one stat
// that checks its size. Its footer is read and checked at first use.
// After a crash (the clean close record gone) the same: one stat each.
func TestOpenAfterCleanCloseIsFlat(t *testing.T) {
	type cost struct{ reads, opens, sizes, bytes int64 }
	got := map[string]cost{}
	for _, segments := range []int{4, 64} {
		sim := blockdev.NewSimDir(blockdev.SimOptions{})
		d := &metaCountingDir{countingDir: countingDir{Dir: sim}}
		o := testOptions(d)
		o.MaxOpenSegments = 128
		l, err := Open("sim", o)
		require.NoError(t, err)
		for len(l.Segments()) < segments {
			appendOff(t, l, 3, 3000)
			require.NoError(t, l.Roll())
		}
		end := appendOff(t, l, 3, 3000)
		require.NoError(t, l.Close())
		for _, readOnly := range []bool{true, false} {
			ro := o
			ro.ReadOnly = readOnly
			r0, b0, o0, s0 := d.reads.Load(), d.bytes.Load(), d.opens.Load(), d.sizes.Load()
			l, err = Open("sim", ro)
			require.NoError(t, err)
			c := cost{d.reads.Load() - r0, d.opens.Load() - o0, d.sizes.Load() - s0, d.bytes.Load() - b0}
			rec := l.Stats().LastOpenRecovery
			what := fmt.Sprintf("%d segments, read-only %v", segments, readOnly)
			t.Logf("%s: %+v", what, c)
			assert.True(t, rec.CleanIndex, what)
			assert.Equal(t, segments-1, rec.Deferred, what)
			assert.Equal(t, int64(segments-1), c.sizes, "%s: one stat of each sealed segment (its size checked against the manifest), nothing else", what)
			key := fmt.Sprint(readOnly)
			if prev, ok := got[key]; ok {
				assert.Equal(t, prev.reads, c.reads, "%s: device reads", what)
				assert.Equal(t, prev.opens, c.opens, "%s: files opened", what)
				// The manifest grows by 56 bytes a segment: at most a
				// block more of it is read for 60 more segments.
				assert.LessOrEqual(t, c.bytes-prev.bytes, int64(4096), "%s: bytes read", what)
			}
			got[key] = c
			requireOffRecords(t, l, 0, end, 3000) // every footer checked at first use
			require.NoError(t, l.Close())
		}
		// After a crash-like open (no clean close record): one stat per
		// sealed segment, still no footer read.
		l, err = Open("sim", o)
		require.NoError(t, err)
		end = appendOff(t, l, 1, 3000) // removes the record
		crashed := sim.Crash(blockdev.CrashKeepAll)
		l.Close()
		d2 := &metaCountingDir{countingDir: countingDir{Dir: crashed}}
		l, err = Open("sim", testOptionsLike(o, d2))
		require.NoError(t, err)
		assert.False(t, l.Stats().LastOpenRecovery.CleanIndex)
		assert.Equal(t, int64(segments-1), d2.sizes.Load(), "after a crash each sealed size is stat'ed")
		requireOffRecords(t, l, 0, end, 3000)
		require.NoError(t, l.Close())
	}
}
