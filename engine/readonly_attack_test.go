package engine

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// frameLog writes batches of 10 records in one segment (each batch one
// frame) and closes the writer; it returns the directory and where each
// frame ends (what the writer published after it).
func frameLog(t *testing.T, batches int) (path string, ends []position) {
	t.Helper()
	path = t.TempDir()
	w := realLog(t, path)
	for b := range batches {
		recs := make([][]byte, 10)
		for i := range recs {
			recs[i] = sizedRecord(uint64(b*10+i), 300)
		}
		_, err := w.Append(recs...)
		require.NoError(t, err)
		st, ok := w.pub.read()
		require.True(t, ok)
		ends = append(ends, st.end)
	}
	require.NoError(t, w.Close())
	return path, ends
}

// fakeWriter holds the log's lock and publishes end for segment 0, as a
// live writer that has acknowledged that far would.
type fakeWriter struct {
	unlock func() error
	d      *durableFile
}

func newFakeWriter(t *testing.T, path string, end position) *fakeWriter {
	dir, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	unlock, err := dir.Lock(lockName)
	require.NoError(t, err)
	d, err := createDurable(osDir(t, path))
	require.NoError(t, err)
	d.publish(0, end)
	return &fakeWriter{unlock: unlock, d: d}
}

func (f *fakeWriter) gone(t *testing.T) {
	// Killed: the lock goes with the process, the words stay as they were.
	f.d.m.Close()
	require.NoError(t, f.unlock())
}

// damageSegment changes the bytes of segment 0 at [at, at+n): each is
// flipped, or zeroed if zero is set.
func damageSegment(t *testing.T, path string, at int64, n int, zero bool) {
	t.Helper()
	file := filepath.Join(path, segName(0))
	if zero {
		testutil.ZeroRange(t, file, at, n)
	} else {
		testutil.XorRange(t, file, at, n, 0x40)
	}
}

// TestRefreshReportsDamageToAcknowledgedRecords: a read-only log beside a
// live writer shows nothing of a damaged frame past the end the writer
// has acknowledged (it may be an append in flight), and no error; once
// the writer acknowledges records past it, Refresh reports the damage as
// corruption at the frame's position. It used to stop there without a
// word: the acknowledged records read as out of range for ever, and a
// reader waiting for them waited for ever. The records before the frame
// stay readable and no damaged byte is returned.
func TestRefreshReportsDamageToAcknowledgedRecords(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame int // the damaged frame (of 3)
		at, n int // damaged bytes from the frame's start
		zero  bool
	}{
		{name: "flipped payload byte, middle frame", frame: 1, at: wal.FrameHeaderLen + 100, n: 1},
		{name: "flipped header bytes, middle frame", frame: 1, at: 4, n: 8},
		{name: "zeroed header, middle frame", frame: 1, at: 0, n: wal.FrameHeaderLen, zero: true},
		{name: "zeroed frame, middle frame", frame: 1, at: 0, n: 3000, zero: true},
		{name: "flipped payload byte, last frame", frame: 2, at: wal.FrameHeaderLen + 2000, n: 1},
		{name: "zeroed header, last frame", frame: 2, at: 0, n: wal.FrameHeaderLen, zero: true},
		{name: "zeroed tail of the last frame", frame: 2, at: 512, n: 2000, zero: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, ends := frameLog(t, 3)
			start := ends[tc.frame-1]
			damageSegment(t, path, start.pos+int64(tc.at), tc.n, tc.zero)
			fw := newFakeWriter(t, path, start)
			defer fw.gone(t)
			r := readerOf(t, path)
			require.Equal(t, start.off, r.EndOffset())

			// Past the acknowledged end: maybe in flight, not shown, no error.
			changed, err := r.Refresh()
			require.NoError(t, err)
			assert.False(t, changed)
			_, err = r.Read(start.off, nil)
			require.ErrorIs(t, err, ErrOutOfRange)

			// Acknowledged: the damage is reported where it is.
			fw.d.publish(0, ends[2])
			_, err = r.Refresh()
			require.ErrorIs(t, err, ErrCorrupt)
			var ce *CorruptionError
			require.True(t, errors.As(err, &ce), "%v", err)
			assert.Equal(t, start.pos, ce.Position, "%v", err)
			assert.Equal(t, start.off, r.EndOffset(), "nothing of the damaged frame is shown")
			for off := uint64(0); off < ends[2].off; off++ {
				b, err := r.Read(off, nil)
				if off < start.off {
					require.NoError(t, err, "offset %d", off)
					require.Equal(t, sizedRecord(off, 300), b, "offset %d", off)
				} else {
					require.Error(t, err, "offset %d: damaged or beyond, never data", off)
				}
			}
		})
	}
}

// TestRefreshAfterTheWriterIsGoneJudgesAsAnOpen: once the writer is gone
// (killed: its lock released, its words left), a read-only log that
// followed it judges the frames after what it shows as a read-only open
// of the directory does: damage a crash cannot explain is corruption, a
// torn tail shows nothing more, and an intact file all of it. It used to
// stop at the first frame it could not decode without a word, whatever
// followed, so a damaged frame the writer had acknowledged left the
// reader short of records an open showed, for ever.
func TestRefreshAfterTheWriterIsGoneJudgesAsAnOpen(t *testing.T) {
	for _, tc := range []struct {
		name    string
		frame   int // the damaged frame (of 3); -1: none
		at, n   int
		zero    bool
		sectors bool // whole sectors from at to the frame's end
		corrupt bool // what an open finds
	}{
		{name: "intact", frame: -1},
		{name: "flipped payload byte, middle frame", frame: 1, at: wal.FrameHeaderLen + 100, n: 1, corrupt: true},
		{name: "flipped header bytes, middle frame", frame: 1, at: 4, n: 8, corrupt: true},
		{name: "zeroed header, middle frame", frame: 1, at: 0, n: wal.FrameHeaderLen, zero: true, corrupt: true},
		{name: "flipped payload bytes, last frame", frame: 2, at: wal.FrameHeaderLen + 2000, n: 3, corrupt: true},
		{name: "zeroed sectors at the end of the last frame", frame: 2, at: 1024, zero: true, sectors: true},
		{name: "zeroed sectors from the last frame's second", frame: 2, at: 1, zero: true, sectors: true},
		{name: "zeroed last frame", frame: 2, at: 0, n: 3112, zero: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, ends := frameLog(t, 3)
			// As a killed writer leaves it: no clean close record.
			require.NoError(t, os.Remove(filepath.Join(path, manifestName)))
			shown := ends[0]
			if tc.frame >= 0 {
				shown = ends[tc.frame-1]
			}
			fw := newFakeWriter(t, path, shown)
			r := readerOf(t, path)
			require.Equal(t, shown.off, r.EndOffset())
			if tc.frame >= 0 {
				// After the reader's open, past what it shows (the damage
				// an open beside the writer finds is reported there).
				at := shown.pos + int64(tc.at)
				if tc.sectors {
					at = alignedbuf.AlignUp(at, blockdev.SectorSize)
					tc.n = int(alignedbuf.AlignUp(ends[tc.frame].pos, blockdev.SectorSize) - at)
				}
				damageSegment(t, path, at, tc.n, tc.zero)
			}
			_, err := r.Refresh()
			require.NoError(t, err, "beside the live writer, nothing past what it acknowledged is judged")
			fw.gone(t)

			opts := realOptions()
			opts.ReadOnly = true
			fresh, openErr := Open(path, opts)
			_, err = r.Refresh()
			if tc.corrupt {
				require.ErrorIs(t, openErr, ErrCorrupt)
				require.ErrorIs(t, err, ErrCorrupt, "an open finds corruption: %v", openErr)
				var ce *CorruptionError
				require.True(t, errors.As(err, &ce), "%v", err)
				assert.Equal(t, shown.pos, ce.Position, "%v", err)
				assert.Equal(t, shown.off, r.EndOffset())
				return
			}
			require.NoError(t, openErr)
			defer fresh.Close()
			require.NoError(t, err)
			assert.Equal(t, fresh.EndOffset(), r.EndOffset(), "the reader shows what an open shows")
			for off := uint64(0); off < r.EndOffset(); off++ {
				b, err := r.Read(off, nil)
				require.NoError(t, err, "offset %d", off)
				require.Equal(t, sizedRecord(off, 300), b, "offset %d", off)
			}
		})
	}
}

// TestRefreshReportsDamageInASegmentTheWriterRolledPast: a reader that
// showed part of a segment when the writer rolled past it (its footer
// durable, the writer appending to the next one) reads the rest of it; a
// frame found damaged there is corruption at the frame, not a rewrite by
// the writer (ErrRewritten, "reopen", as it was reported).
func TestRefreshReportsDamageInASegmentTheWriterRolledPast(t *testing.T) {
	for _, tc := range []struct {
		name  string
		frame int
		at, n int
		zero  bool
	}{
		{name: "flipped payload byte", frame: 1, at: wal.FrameHeaderLen + 100, n: 1},
		{name: "zeroed header", frame: 1, at: 0, n: wal.FrameHeaderLen, zero: true},
		{name: "flipped payload byte of the last frame", frame: 2, at: wal.FrameHeaderLen + 100, n: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, ends := frameLog(t, 3)
			fw := newFakeWriter(t, path, ends[0])
			r := readerOf(t, path)
			require.Equal(t, ends[0].off, r.EndOffset())
			fw.gone(t)

			// The writer comes back, rolls past the segment and appends.
			w, err := Open(path, realOptions())
			require.NoError(t, err)
			defer w.Close()
			require.NoError(t, w.Roll())
			_, err = w.Append([]byte("in the next segment"))
			require.NoError(t, err)
			require.Len(t, w.Segments(), 2)
			damageSegment(t, path, ends[tc.frame-1].pos+int64(tc.at), tc.n, tc.zero)

			_, err = r.Refresh()
			require.ErrorIs(t, err, ErrCorrupt)
			require.NotErrorIs(t, err, ErrRewritten)
			var ce *CorruptionError
			require.True(t, errors.As(err, &ce), "%v", err)
			assert.Equal(t, ends[tc.frame-1].pos, ce.Position, "%v", err)
		})
	}
}

// TestRefreshReportsDataAfterAFooterBesideALiveWriter: beside a live
// writer whose words still name a segment whose footer is durable (its
// seal is done, the roll not yet published), bytes after that footer are
// corruption, as an open finds: no append follows a footer, so nothing
// there is in flight. The reader took the error for an append in flight
// and the segment for sealed, and never looked at it again.
func TestRefreshReportsDataAfterAFooterBesideALiveWriter(t *testing.T) {
	path, ends := frameLog(t, 3)
	fw := newFakeWriter(t, path, ends[0])
	r := readerOf(t, path)
	require.Equal(t, ends[0].off, r.EndOffset())
	fw.gone(t)

	w, err := Open(path, realOptions())
	require.NoError(t, err)
	require.NoError(t, w.Roll())
	require.NoError(t, w.Close())
	seg := filepath.Join(path, segName(0))
	fi, err := os.Stat(seg)
	require.NoError(t, err)
	f, err := os.OpenFile(seg, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte("bytes after the footer"), fi.Size()+100)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	// The words as they are between the seal's fdatasync and the roll's
	// publish: the sealed segment, up to its footer.
	fw = newFakeWriter(t, path, ends[2])
	defer fw.gone(t)

	opts := realOptions()
	opts.ReadOnly = true
	_, openErr := Open(path, opts)
	require.ErrorIs(t, openErr, ErrCorrupt)
	_, err = r.Refresh()
	require.ErrorIs(t, err, ErrCorrupt, "an open finds: %v", openErr)
}
