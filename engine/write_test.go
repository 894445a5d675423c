package engine

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// offRecord is the record every test of this file stores at offset off: its
// offset, then filler derived from it, size bytes less up to 63 (varying
// with off). A read that returns the wrong record, or wrong bytes, is
// detected.
func offRecord(off uint64, size int) []byte {
	n := max(8, size-int(off*37%64))
	b := make([]byte, n)
	binary.LittleEndian.PutUint64(b, off)
	testutil.FillXor(b, 8, byte(off))
	return b
}

// checkOffRecord says what is wrong with got as the record at off.
func checkOffRecord(off uint64, got []byte, size int) error {
	if want := offRecord(off, size); !bytes.Equal(got, want) {
		return fmt.Errorf("offset %d: got %d bytes (%x...), want %d", off, len(got), got[:min(len(got), 8)], len(want))
	}
	return nil
}

// appendOff appends n records (offRecord, one batch each) and returns the
// end offset.
func appendOff(t *testing.T, l *Log, n, size int) uint64 {
	t.Helper()
	for range n {
		off := l.EndOffset()
		first, err := l.Append(offRecord(off, size))
		require.NoError(t, err)
		require.Equal(t, off, first)
	}
	return l.EndOffset()
}

// requireOffRecords reads and iterates [from, to) and checks every record.
func requireOffRecords(t *testing.T, l *Log, from, to uint64, size int) {
	t.Helper()
	for off := from; off < to; off++ {
		got, err := l.Read(off, nil)
		require.NoError(t, err, "read %d", off)
		require.NoError(t, checkOffRecord(off, got, size))
	}
	it := l.NewIterator(from)
	defer it.Close()
	next := from
	for it.Next() {
		require.Equal(t, next, it.Offset())
		require.NoError(t, checkOffRecord(next, it.Record(), size))
		next++
	}
	require.NoError(t, it.Err())
	require.Equal(t, to, max(next, from), "the iterator reaches the end")
}

// TestAppendersDuringRolls: many appenders whose appends roll segments
// (and start preparing the next file) while other appends roll them away.
// An appender must not touch a segment's writer once it let go of the
// log's lock (the race detector, or a nil dereference, caught that).
func TestAppendersDuringRolls(t *testing.T) {
	for _, mode := range []SyncMode{wal.SyncNever, wal.SyncAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			dir := blockdev.NewSimDir(blockdev.SimOptions{})
			o := testOptions(dir)
			o.SegmentSize, o.SyncMode = minSegmentSize, mode
			l, err := Open("sim", o)
			require.NoError(t, err)
			const appenders, each = 32, 60
			got := make([]map[uint64]string, appenders)
			var wg sync.WaitGroup
			for g := range appenders {
				got[g] = map[uint64]string{}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						rec := fmt.Sprintf("g%02d-%04d-%s", g, i, bytes.Repeat([]byte{'.'}, 300))
						off, err := l.Append([]byte(rec))
						if !assert.NoError(t, err) {
							return
						}
						got[g][off] = rec
					}
				}()
			}
			wg.Wait()
			require.Greater(t, len(l.Segments()), 10, "the appends rolled many segments")
			require.NoError(t, l.Close())
			l, err = Open("sim", o)
			require.NoError(t, err)
			defer l.Close()
			require.Equal(t, uint64(appenders*each), l.EndOffset())
			for _, m := range got {
				for off, rec := range m {
					b, err := l.Read(off, nil)
					require.NoError(t, err)
					require.Equal(t, rec, string(b))
				}
			}
		})
	}
}

// failSealSync makes the fdatasync after the seal's truncate fail on the
// active segment of l (segment file name): the footer is durable, the cut
// to end at it is not.
func failSealSync(dir *blockdev.SimDir, name string) {
	f := dir.File(name)
	f.FailNth(blockdev.OpSync, f.Calls(blockdev.OpSync)+2) // +1: the footer's
}

// TestReadersNeverSeeTheFooterAsRecords: a seal that stops after its
// footer is durable leaves the records readable as they were: a read or an
// iterator never looks at the footer frame as if it held records.
func TestReadersNeverSeeTheFooterAsRecords(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	defer l.Close()
	end := appendOff(t, l, 20, 200)
	failSealSync(dir, segName(0))
	require.ErrorContains(t, l.Roll(), "reopen it to recover")

	info := l.Segments()[0]
	assert.Equal(t, end, info.Next)
	requireOffRecords(t, l, 0, end, 200)
}

// TestInterruptedSealIsFinished: a crash between the seal's footer
// fdatasync and its truncate leaves the footer followed by zeros. A
// read-only open exports the file up to the footer's end; a writable open
// cuts the zeros (and says so), after which the manifest trusts the
// segment again; every exported sealed file passes an import's checks.
func TestInterruptedSealIsFinished(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	o := testOptions(dir)
	l, err := Open("sim", o)
	require.NoError(t, err)
	end := appendOff(t, l, 20, 200)
	failSealSync(dir, segName(0))
	require.Error(t, l.Roll())
	l.Close()
	dir = dir.Crash(blockdev.CrashDropUnsynced)
	o.Dir = dir
	size, err := dir.Size(segName(0))
	require.NoError(t, err)
	require.Equal(t, o.SegmentSize, size, "the preallocated file was not cut")

	ro := o
	ro.ReadOnly = true
	r, err := Open("sim", ro)
	require.NoError(t, err)
	segs := r.Segments()
	require.Len(t, segs, 2, "the next segment was made before the seal")
	require.True(t, segs[0].Sealed)
	assert.Less(t, segs[0].ExportSize(), size, "exports end at the footer")
	requireExportImports(t, r, dir, segs[0])
	requireOffRecords(t, r, 0, end, 200)
	require.NoError(t, r.Close())
	after, err := dir.Size(segName(0))
	require.NoError(t, err)
	assert.Equal(t, size, after, "a read-only open changes nothing")

	l, err = Open("sim", o)
	require.NoError(t, err)
	assert.Equal(t, []uint64{0}, l.Stats().LastOpenRecovery.FinishedSeals)
	size, err = dir.Size(segName(0))
	require.NoError(t, err)
	assert.Equal(t, segs[0].ExportSize(), size, "the file ends at its footer")
	requireOffRecords(t, l, 0, end, 200)
	requireExportImports(t, l, dir, l.Segments()[0])
	require.NoError(t, l.Close())

	l, err = Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	rec := l.Stats().LastOpenRecovery
	assert.Equal(t, 1, rec.Deferred, "trusted through the manifest, not read again")
	assert.Empty(t, rec.FinishedSeals)
}

// requireExportImports checks that what a view of the sealed segment si
// exports (its first ExportSize bytes) is a file that an import accepts:
// the footer found at its end, every frame verified against it.
func requireExportImports(t *testing.T, l *Log, dir *blockdev.SimDir, si SegmentInfo) {
	t.Helper()
	require.True(t, si.Sealed)
	b := dir.File(si.File).Bytes()
	require.GreaterOrEqual(t, int64(len(b)), si.ExportSize())
	dev := blockdev.NewSimFrom(b[:si.ExportSize()], blockdev.SimOptions{Name: "export-of-" + si.File})
	s := l.newSegment(si.Base, dev)
	defer s.release()
	require.NoError(t, l.verifyImport(s), "the export of %s", si.File)
	assert.Equal(t, si.Next, s.vis().off)
}

// TestVerifyReportsAnInterruptedSeal: verify names the footer followed by
// zeros as repairable, and a writable open repairs it.
func TestVerifyReportsAnInterruptedSeal(t *testing.T) {
	path := t.TempDir()
	l := realLog(t, path)
	fillSegments(t, l, 2)
	segs := l.Segments()
	require.NoError(t, l.Close())
	file := filepath.Join(path, segs[0].File)
	require.NoError(t, os.Truncate(file, segs[0].Bytes+64<<10))

	r, err := Verify(path, VerifyOptions{})
	require.NoError(t, err)
	require.Len(t, r.Problems, 1)
	p := r.Problems[0]
	assert.Equal(t, ProblemUnfinishedSeal, p.Kind)
	assert.True(t, p.Repairable)
	assert.Equal(t, segs[0].Bytes, p.Position)

	l = realLog(t, path)
	assert.Equal(t, []uint64{segs[0].Base}, l.Stats().LastOpenRecovery.FinishedSeals)
	require.NoError(t, l.Close())
	r, err = Verify(path, VerifyOptions{})
	require.NoError(t, err)
	assert.True(t, r.Clean(), "%v", r.Problems)
}

// TestAppendAcknowledgedBeforeAFailedRoll: a batch that is durable is
// acknowledged, even when the roll it triggers fails; the failure comes
// with the next call, names the segment's file (not the spare it was
// prepared as) and says to reopen; the reopened log holds the batch.
func TestAppendAcknowledgedBeforeAFailedRoll(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	o := testOptions(dir)
	l, err := Open("sim", o)
	require.NoError(t, err)
	const size = 8 << 10 // larger than the index interval: every frame is indexed
	var base uint64
	rolls := 0
	for rolls < 2 {
		// The next frame starts at the durable end; Append rolls after it
		// if it starts within MaxWrite of the segment's size.
		l.mu.RLock()
		pos, _ := l.active.w.Durable()
		s := l.active
		l.mu.RUnlock()
		if pos+int64(o.MaxWrite) >= o.SegmentSize {
			rolls++
			if rolls == 2 {
				base = s.base
				failSealSync(dir, s.name)
			}
		}
		want := l.EndOffset()
		first, err := l.Append(offRecord(want, size))
		require.NoError(t, err, "the batch is durable: acknowledged")
		require.Equal(t, want, first)
		settle(l) // the roll it started, if any, is done (or failed)
	}
	require.NotZero(t, base, "the failed roll is of a segment made from the spare")
	end := l.EndOffset()

	_, err = l.Append([]byte("x"))
	require.ErrorContains(t, err, "reopen it to recover")
	assert.ErrorContains(t, err, segName(base))
	assert.NotContains(t, err.Error(), spareName)
	assert.ErrorIs(t, l.Roll(), err, "sticky")
	l.Close()

	l, err = Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	require.Equal(t, end, l.EndOffset())
	requireOffRecords(t, l, 0, end, size)
}

// TestRolledSegmentNamesItsFile: a segment made from the prepared spare
// file names its own file in errors, on a real directory too.
func TestRolledSegmentNamesItsFile(t *testing.T) {
	l := realLog(t, t.TempDir())
	defer l.Close()
	fillSegments(t, l, 2)
	l.mu.RLock()
	defer l.mu.RUnlock()
	require.True(t, l.active.base > 0)
	assert.Equal(t, l.active.path, l.active.dev.Name())
}

// TestImportedSegmentNamesItsFile: an imported segment, received under a
// temporary name, names its own file in errors.
func TestImportedSegmentNamesItsFile(t *testing.T) {
	leader := realLog(t, t.TempDir())
	defer leader.Close()
	fillSegments(t, leader, 1)
	si := leader.Segments()[0]
	v, err := leader.OpenSegment(si.Base)
	require.NoError(t, err)
	defer v.Close()
	follower := realLog(t, t.TempDir())
	defer follower.Close()
	_, err = follower.ImportSegment(io.NewSectionReader(v, 0, v.Size()), si.Base, v.Size())
	require.NoError(t, err)
	s, err := follower.segmentAt(si.Base)
	require.NoError(t, err)
	defer s.done()
	assert.Equal(t, s.path, s.dev.Name())
}
