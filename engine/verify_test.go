package engine

import (
	"bytes"
	"fmt"
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

// damagedStore builds a closed store of four sealed segments and an active
// one, then applies damage to it; it returns the directory and the
// segments as they were.
func damagedStore(t *testing.T, damage func(t *testing.T, path string, segs []SegmentInfo, activeEnd int64)) (string, []SegmentInfo) {
	t.Helper()
	path := t.TempDir()
	l := realLog(t, path)
	fillSegments(t, l, 4)
	appendN(t, l, 3)
	segs := l.Segments()
	end := l.active.vis().pos
	require.NoError(t, l.Close())
	damage(t, path, segs, end)
	return path, segs
}

// footerAt is the position of the footer of the sealed segment file.
func footerAt(t *testing.T, file string) int64 {
	t.Helper()
	dev, err := blockdev.Open(file, blockdev.Options{ReadOnly: true, Buffered: true})
	require.NoError(t, err)
	defer dev.Close()
	return footerPos(t, dev)
}

func TestVerify(t *testing.T) {
	file := func(path string, s SegmentInfo) string { return filepath.Join(path, s.File) }
	tests := []struct {
		name       string
		damage     func(t *testing.T, path string, segs []SegmentInfo, activeEnd int64)
		kind       string // "" for a clean store
		segment    int    // index of the damaged segment
		repairable bool
	}{
		{"clean", func(*testing.T, string, []SegmentInfo, int64) {}, "", 0, false},
		{"torn tail", func(t *testing.T, path string, segs []SegmentInfo, end int64) {
			f, err := os.OpenFile(file(path, segs[4]), os.O_WRONLY, 0)
			require.NoError(t, err)
			defer f.Close()
			// A frame whose last sector never reached the disk.
			frame := make([]byte, wal.FrameSize(wal.PayloadSize([][]byte{make([]byte, 2000)})))
			n := wal.EncodeFrame(frame, 0, end, -1, segs[4].Next, 1, [][]byte{bytes.Repeat([]byte{'t'}, 2000)})
			clear(frame[(end+1024+511)&^511-end : n]) // whole sectors of it never reached the disk
			_, err = f.WriteAt(frame[:n], end)
			require.NoError(t, err)
		}, ProblemTornTail, 4, true},
		{"flipped byte in a record", func(t *testing.T, path string, segs []SegmentInfo, _ int64) {
			testutil.XorByte(t, file(path, segs[1]), wal.DataStart+wal.FrameHeaderLen+50, 0x40)
		}, ProblemCorruption, 1, false},
		{"damaged footer", func(t *testing.T, path string, segs []SegmentInfo, _ int64) {
			testutil.XorByte(t, file(path, segs[2]), footerAt(t, file(path, segs[2]))+wal.FrameHeaderLen+40, 0x40)
		}, ProblemFooter, 2, true},
		{"missing segment", func(t *testing.T, path string, segs []SegmentInfo, _ int64) {
			require.NoError(t, os.Remove(file(path, segs[2])))
		}, ProblemMissing, 3, false},
		{"unsealed segment before the last", func(t *testing.T, path string, segs []SegmentInfo, _ int64) {
			f := file(path, segs[1])
			pos := footerAt(t, f)
			require.NoError(t, os.Truncate(f, pos))
		}, ProblemUnsealed, 1, true},
		{"torn seal of a segment before the last", func(t *testing.T, path string, segs []SegmentInfo, _ int64) {
			// A crash during a roll: the next file was made, the old
			// one's footer write kept its header's sector only.
			f := file(path, segs[1])
			pos := footerAt(t, f)
			st, err := os.Stat(f)
			require.NoError(t, err)
			at := (pos + wal.FrameHeaderLen + 511) &^ 511
			require.Less(t, at, st.Size(), "the footer runs past its header's sector")
			testutil.ZeroRange(t, f, at, int(st.Size()-at))
		}, ProblemTornTail, 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path, segs := damagedStore(t, tc.damage)
			r, err := Verify(path, VerifyOptions{})
			require.NoError(t, err)
			if tc.kind == "" {
				require.True(t, r.Clean(), "%v", r.Problems)
				assert.Equal(t, 5, r.Segments)
				assert.Equal(t, 4, r.Sealed)
				assert.Equal(t, segs[4].Next, r.End)
				assert.Equal(t, r.End-r.Start, r.Records)
				return
			}
			require.Len(t, r.Problems, 1, "%v", r.Problems)
			p := r.Problems[0]
			assert.Equal(t, tc.kind, p.Kind, "%v", p)
			assert.Equal(t, segs[tc.segment].Base, p.Segment)
			assert.Equal(t, tc.repairable, p.Repairable)
			assert.Contains(t, p.String(), segs[tc.segment].File)
		})
	}
	_, err := Verify(filepath.Join(t.TempDir(), "nothing"), VerifyOptions{})
	assert.ErrorIs(t, err, os.ErrNotExist)
}

// TestVerifyBesideALiveWriter: with the store's lock held by a writer,
// bytes after the last segment's records are an append in flight, not a
// problem; without it they are a torn tail.
func TestVerifyBesideALiveWriter(t *testing.T) {
	path, segs := damagedStore(t, func(t *testing.T, path string, segs []SegmentInfo, end int64) {
		f, err := os.OpenFile(filepath.Join(path, segs[4].File), os.O_WRONLY, 0)
		require.NoError(t, err)
		defer f.Close()
		frame := make([]byte, wal.FrameSize(wal.PayloadSize([][]byte{make([]byte, 2000)})))
		n := wal.EncodeFrame(frame, 0, end, -1, segs[4].Next, 1, [][]byte{bytes.Repeat([]byte{'t'}, 2000)})
		clear(frame[(end+1024+511)&^511-end : n])
		_, err = f.WriteAt(frame[:n], end)
		require.NoError(t, err)
	})
	d, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	release, err := d.Lock(lockName) // a writer, as far as Verify can tell
	require.NoError(t, err)
	r, err := Verify(path, VerifyOptions{})
	require.NoError(t, err)
	assert.True(t, r.LiveWriter)
	assert.True(t, r.TailInFlight)
	assert.True(t, r.Clean(), "%v", r.Problems)
	require.NoError(t, release())
	r, err = Verify(path, VerifyOptions{})
	require.NoError(t, err)
	assert.False(t, r.LiveWriter)
	require.Len(t, r.Problems, 1)
	assert.Equal(t, ProblemTornTail, r.Problems[0].Kind)
	assert.Equal(t, segs[4].Base, r.Problems[0].Segment)
}

// TestVerifyBesideALiveWriterKnowsWhatIsAcknowledged: beside a live
// writer, damage that looks like an unfinished write but lies before the
// end the writer has acknowledged (its DURABLE file) is corruption, not
// an append in flight.
func TestVerifyBesideALiveWriterKnowsWhatIsAcknowledged(t *testing.T) {
	path := t.TempDir()
	writer := realLog(t, path)
	defer writer.Close()
	for range 8 {
		_, err := writer.Append(bytes.Repeat([]byte{'a'}, 1500), bytes.Repeat([]byte{'b'}, 1500))
		require.NoError(t, err)
	}
	r, err := Verify(path, VerifyOptions{})
	require.NoError(t, err)
	require.True(t, r.LiveWriter)
	require.True(t, r.Clean(), "%v", r.Problems)

	active := writer.Segments()[len(writer.Segments())-1]
	f, err := os.OpenFile(filepath.Join(path, active.File), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteAt(make([]byte, blockdev.SectorSize), wal.DataStart+4096) // a sector of acknowledged frames zeroed
	require.NoError(t, f.Close())
	require.NoError(t, err)
	r, err = Verify(path, VerifyOptions{})
	require.NoError(t, err)
	assert.False(t, r.TailInFlight)
	require.Len(t, r.Problems, 1, "%v", r.Problems)
	assert.Equal(t, ProblemCorruption, r.Problems[0].Kind)
	assert.Contains(t, r.Problems[0].Detail, "acknowledged")
}

// copyStore copies the files of the store in src into a new directory.
func copyStore(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	names, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n.Name()))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dst, n.Name()), b, 0o644))
	}
	return dst
}

// Verify lists the segment files once and reads them one by one: a file
// gone by the time it is read was dropped by retention if it lies below
// every segment still there, and is then no damage; one gone from the
// middle leaves a gap, which is reported. Every position: the first k
// listed files removed after the listing (k = 1 to all but the last),
// and each single file between the first and the last removed.
func TestVerifySkipsSegmentsRetentionDropped(t *testing.T) {
	orig, segs := damagedStore(t, func(*testing.T, string, []SegmentInfo, int64) {})
	require.Len(t, segs, 5)
	clean, err := Verify(orig, VerifyOptions{})
	require.NoError(t, err)
	require.Empty(t, clean.Problems)
	verifyStale := func(path string, remove ...int) *VerifyReport {
		d, err := blockdev.OpenDir(path, false)
		require.NoError(t, err)
		names, err := d.List()
		require.NoError(t, err)
		for _, i := range remove {
			require.NoError(t, os.Remove(filepath.Join(path, segName(segs[i].Base))))
		}
		r, err := verifyListed(d, names, VerifyOptions{})
		require.NoError(t, err, "a file gone after the listing does not stop Verify")
		return r
	}
	for k := 1; k < len(segs); k++ {
		t.Run(fmt.Sprintf("first %d dropped", k), func(t *testing.T) {
			var remove []int
			for i := range k {
				remove = append(remove, i)
			}
			r := verifyStale(copyStore(t, orig), remove...)
			assert.Empty(t, r.Problems, "segments dropped from the front are no damage")
			assert.Equal(t, len(segs)-k, r.Segments)
			assert.Equal(t, segs[k].Base, r.Start, "the report starts at the first segment left")
			assert.Equal(t, clean.End, r.End)
		})
	}
	for i := 1; i < len(segs)-1; i++ {
		t.Run(fmt.Sprintf("segment %d of the middle gone", i), func(t *testing.T) {
			r := verifyStale(copyStore(t, orig), i)
			require.Len(t, r.Problems, 1)
			p := r.Problems[0]
			assert.Equal(t, ProblemMissing, p.Kind)
			assert.Equal(t, segs[i+1].Base, p.Segment, "the segment after the gap reports it")
			assert.Equal(t, segs[0].Base, r.Start)
		})
	}
}

// Verify beside a live writer whose retention keeps dropping the oldest
// segments (64 KiB segments, ten kept) reports nothing wrong and fails
// nowhere, over 40 checks.
func TestVerifyBesideRetention(t *testing.T) {
	path := t.TempDir()
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.IndexInterval, o.Logger = 64<<10, 16<<10, 4096, quiet
	o.SyncMode, o.RetentionBytes = SyncNever, 10*64<<10
	w, err := Open(path, o)
	require.NoError(t, err)
	defer w.Close()
	rec := make([]byte, 3000)
	for len(w.Segments()) < 10 {
		_, err := w.Append(rec)
		require.NoError(t, err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := w.Append(rec); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for i := range 40 {
		rep, err := Verify(path, VerifyOptions{})
		require.NoError(t, err, "check %d", i)
		require.Empty(t, rep.Problems, "check %d", i)
	}
}
