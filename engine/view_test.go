package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/engine/internal/stracetest"
	"github.com/segstore/segstore/wal"
)

// realLog opens a log in a fresh directory with 256 KiB segments.
func realLog(t *testing.T, path string) *Log {
	t.Helper()
	l, err := Open(path, realOptions())
	require.NoError(t, err)
	return l
}

// realOptions are realLog's options: small segments, so tests roll.
func realOptions() Options {
	opts := DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.Logger = 256<<10, 64<<10, quiet
	return opts
}

// fillSegments appends batches of 10 records of ~200 bytes until the log
// has sealed at least n segments.
func fillSegments(t *testing.T, l *Log, n int) {
	t.Helper()
	for len(l.Segments()) <= n {
		batch := make([][]byte, 10)
		for i := range batch {
			batch[i] = []byte(fmt.Sprintf("record-%08d-%s", l.EndOffset()+uint64(i), bytes.Repeat([]byte{'x'}, 180)))
		}
		_, err := l.Append(batch...)
		require.NoError(t, err)
	}
	require.NoError(t, l.Sync()) // the roll the last append started is done: the segments before the last are sealed
}

// overTCP sends with send over a loopback TCP connection and returns what
// the other end received.
func overTCP(t *testing.T, send func(w io.Writer) (int64, error)) []byte {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	_, err = send(c)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	return <-got
}

// firstSegment is the first segment of l, whose directory is path, and
// its file's bytes.
func firstSegment(t *testing.T, l *Log, path string) (SegmentInfo, []byte) {
	t.Helper()
	info := l.Segments()[0]
	file, err := os.ReadFile(filepath.Join(path, info.File))
	require.NoError(t, err)
	return info, file
}

// sealedSegment opens a log in a fresh directory with two sealed
// segments and returns it (closed when the test ends), its directory and
// its second segment.
func sealedSegment(t *testing.T) (l *Log, path string, info SegmentInfo) {
	t.Helper()
	path = t.TempDir()
	l = realLog(t, path)
	t.Cleanup(func() { l.Close() })
	fillSegments(t, l, 2)
	info = l.Segments()[1]
	require.True(t, info.Sealed)
	return l, path, info
}

func TestViewExportsExactBytes(t *testing.T) {
	l, path, info := sealedSegment(t)
	file, err := os.ReadFile(filepath.Join(path, info.File))
	require.NoError(t, err)

	v, err := l.OpenSegment(info.Base)
	require.NoError(t, err)
	defer v.Close()
	require.Equal(t, int64(len(file)), v.Size(), "a sealed view is the whole file")

	all := make([]byte, v.Size())
	n, err := v.ReadAt(all, 0)
	require.NoError(t, err)
	require.Equal(t, len(file), n)
	require.Equal(t, file, all)
	_, err = v.ReadAt(make([]byte, 10), v.Size()-4)
	assert.ErrorIs(t, err, io.EOF)

	var buf bytes.Buffer
	_, err = v.WriteTo(&buf)
	require.NoError(t, err)
	require.Equal(t, file, buf.Bytes())
	require.Equal(t, file, overTCP(t, v.WriteTo))

	size := v.Size()
	for _, r := range [][2]int64{{0, 0}, {1, 100}, {4095, 8193}, {size - 7, 7}, {513, size - 1024}} {
		sec := v.Section(r[0], r[1])
		require.Equal(t, r[1], sec.Size())
		assert.Equal(t, file[r[0]:r[0]+r[1]], overTCP(t, sec.WriteTo), "section %v by sendfile", r)
		buf.Reset()
		_, err := sec.WriteTo(&buf)
		require.NoError(t, err)
		assert.Equal(t, file[r[0]:r[0]+r[1]], buf.Bytes(), "section %v by copy", r)
	}
	for _, r := range [][2]int64{{-1, 10}, {0, size + 1}, {size, 1}, {10, -1}} {
		_, err := v.Section(r[0], r[1]).WriteTo(io.Discard)
		assert.ErrorIs(t, err, ErrOutOfRange, "range %v", r)
	}
	st := l.Stats()
	assert.Greater(t, st.ExportSendfileBytes, 2*size, "socket exports are counted as sendfile")
	assert.Greater(t, st.ExportCopiedBytes, size, "buffer exports are counted as copies")

	_, err = l.OpenSegment(info.Base + 1)
	assert.ErrorIs(t, err, ErrOutOfRange, "no segment starts there")
}

func TestViewOfActiveSegmentStopsAtDurableEnd(t *testing.T) {
	path := t.TempDir()
	l := realLog(t, path)
	defer l.Close()
	fillSegments(t, l, 1)
	appendN(t, l, 5)
	segs := l.Segments()
	active := segs[len(segs)-1]
	require.False(t, active.Sealed)
	v, err := l.OpenSegment(active.Base)
	require.NoError(t, err)
	defer v.Close()
	require.Equal(t, l.active.vis().pos, v.Size())
	file, err := os.ReadFile(filepath.Join(path, active.File))
	require.NoError(t, err)
	require.Greater(t, int64(len(file)), v.Size(), "the preallocated file is longer than its durable records")
	assert.Equal(t, file[:v.Size()], overTCP(t, v.WriteTo))
	appendN(t, l, 5)
	assert.Equal(t, file[:v.Size()], overTCP(t, v.WriteTo), "a view keeps the durable end it was opened at")
	_, err = v.Mmap()
	assert.ErrorIs(t, err, ErrNotSealed)
}

// TestViewExportsOnASimulatedDirectory: export runs on any directory that
// opens files through the page cache, the simulated one too: a sealed
// view and an active one hold the file's bytes up to their end, by ReadAt,
// WriteTo and Section, and what they export imports into another log.
// Only Mmap needs a real file, and says so.
func TestViewExportsOnASimulatedDirectory(t *testing.T) {
	d := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	l, err := Open("sim", followFlipOptions(d, false))
	require.NoError(t, err)
	defer l.Close()
	appendFlipRecords(t, l, 12)
	require.NoError(t, l.Roll())
	appendFlipRecords(t, l, 5)
	segs := l.Segments()
	require.Len(t, segs, 2)

	follower, err := Open("sim", followFlipOptions(blockdev.NewSimDir(blockdev.SimOptions{Seed: 2}), false))
	require.NoError(t, err)
	defer follower.Close()
	for _, seg := range segs {
		v, err := l.OpenSegment(seg.Base)
		require.NoError(t, err)
		file := d.File(seg.File).Bytes()[:v.Size()]
		all := make([]byte, v.Size())
		n, err := v.ReadAt(all, 0)
		require.NoError(t, err)
		assert.Equal(t, file, all[:n], "ReadAt of segment %d", seg.Base)
		var buf bytes.Buffer
		_, err = v.WriteTo(&buf)
		require.NoError(t, err)
		assert.Equal(t, file, buf.Bytes(), "WriteTo of segment %d", seg.Base)
		exported := bytes.Clone(buf.Bytes())
		buf.Reset()
		_, err = v.Section(100, v.Size()-200).WriteTo(&buf)
		require.NoError(t, err)
		assert.Equal(t, file[100:v.Size()-100], buf.Bytes(), "a section of segment %d", seg.Base)
		if seg.Sealed {
			_, err = v.Mmap()
			assert.ErrorContains(t, err, "cannot be mapped: its directory holds no files the system can map")
			_, err = follower.ImportSegment(bytes.NewReader(exported), seg.Base, v.Size())
		} else {
			_, err = follower.ImportActive(bytes.NewReader(exported), seg.Base, v.Size())
		}
		require.NoError(t, err, "import of segment %d", seg.Base)
		require.NoError(t, v.Close())
	}
	requireRecordsExact(t, "exported and imported", follower, 0, l.EndOffset(), false, "")
	assert.Positive(t, l.Stats().ExportCopiedBytes)
}

// mapSegment maps the sealed segment at base through a view; both are
// closed when the test ends.
func mapSegment(t *testing.T, l *Log, base uint64) *Mapping {
	t.Helper()
	v, err := l.OpenSegment(base)
	require.NoError(t, err)
	t.Cleanup(func() { v.Close() })
	m, err := v.Mmap()
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return m
}

func TestMappingIteratesInPlace(t *testing.T) {
	l, _, info := sealedSegment(t)
	m := mapSegment(t, l, info.Base)
	it := m.NewIterator()
	want := info.Base
	for it.Next() {
		require.Equal(t, want, it.Offset())
		got, err := l.Read(want, nil)
		require.NoError(t, err)
		require.Equal(t, got, it.Record())
		want++
	}
	require.NoError(t, it.Err())
	assert.Equal(t, info.Next, want, "every record of the segment")
}

// TestMappingFaultIsAnError: a mapped file truncated underneath makes the
// iterator fail with a corruption error instead of crashing the process.
func TestMappingFaultIsAnError(t *testing.T) {
	l, path, info := sealedSegment(t)
	m := mapSegment(t, l, info.Base)
	require.NoError(t, os.Truncate(filepath.Join(path, info.File), 8192))
	it := m.NewIterator()
	n := 0
	for it.Next() {
		n++
	}
	require.ErrorIs(t, it.Err(), ErrCorrupt)
	assert.ErrorContains(t, it.Err(), "fault")
	assert.Less(t, uint64(n), info.Next-info.Base)
}

// TestViewsHoldTheFile: retention or truncation while a view and a mapping
// are open removes the segment's name, but its file stays readable through
// them until the last one closes, and then it goes. (An export of the view
// reopens the file: where that goes by name, as on macOS and BSD, it fails
// with blockdev.ErrReplaced once the name is gone.)
func TestViewsHoldTheFile(t *testing.T) {
	path := t.TempDir()
	l := realLog(t, path)
	defer l.Close()
	fillSegments(t, l, 3)
	info, file := firstSegment(t, l, path)
	v, err := l.OpenSegment(info.Base)
	require.NoError(t, err)
	m, err := v.Mmap()
	require.NoError(t, err)
	s := v.s

	require.NoError(t, l.TruncateFront(l.Segments()[1].Next))
	_, err = os.Stat(filepath.Join(path, info.File))
	require.ErrorIs(t, err, os.ErrNotExist, "the name goes at once")
	var got bytes.Buffer
	if _, err := v.WriteTo(&got); !errors.Is(err, blockdev.ErrReplaced) { // a platform that reopens by name cannot
		require.NoError(t, err)
		assert.Equal(t, file, got.Bytes(), "the view still exports every byte")
	}
	it := m.NewIterator()
	for it.Next() {
	}
	require.NoError(t, it.Err())
	assert.Equal(t, info.Next, it.Offset()+1)

	require.NoError(t, v.Close())
	assert.Equal(t, int64(userRef), s.refs.Load(), "the mapping still holds the file")
	require.NoError(t, m.Close())
	assert.Zero(t, s.refs.Load(), "the last close lets the file go")
	assert.ErrorIs(t, v.Close(), ErrClosed)
}

// reopenHookDir runs hook before each ReopenPlain (an export opening its
// file), so a test can act at that step.
type reopenHookDir struct {
	blockdev.Dir
	hook func()
}

func (d *reopenHookDir) OpenPlain(name string, flag int) (blockdev.PlainFile, error) {
	return d.Dir.(blockdev.PlainOpener).OpenPlain(name, flag)
}

func (d *reopenHookDir) ReopenPlain(dev blockdev.Device) (blockdev.PlainFile, error) {
	d.hook()
	return d.Dir.(blockdev.PlainOpener).ReopenPlain(dev)
}

// TestViewClosedDuringAnExport: a view closed while one of its exports
// opens the segment's file leaves the segment loaded (its file open, its
// device there) until the export is done, which sends every byte; after
// that the segment can be unloaded, and an export says the view is closed.
func TestViewClosedDuringAnExport(t *testing.T) {
	path := t.TempDir()
	od, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	d := &reopenHookDir{Dir: od, hook: func() {}}
	opts := realOptions()
	opts.Dir = d
	l, err := Open(path, opts)
	require.NoError(t, err)
	defer l.Close()
	fillSegments(t, l, 2)
	info, file := firstSegment(t, l, path)
	v, err := l.OpenSegment(info.Base)
	require.NoError(t, err)
	d.hook = func() {
		d.hook = func() {}
		require.NoError(t, v.Close())
		assert.False(t, v.s.unload(), "the export holds the segment")
	}
	assert.Equal(t, file, overTCP(t, v.WriteTo), "the export begun before the close sends every byte")
	require.True(t, v.s.unload(), "nothing holds the segment once the export is done")
	_, err = v.WriteTo(io.Discard)
	assert.ErrorIs(t, err, ErrClosed)
}

// TestWriteToUsesSendfile runs an export under strace (when installed) and
// counts the bytes the sendfile system calls moved.
func TestWriteToUsesSendfile(t *testing.T) {
	if stracetest.InChild(t) {
		l := realLog(t, t.TempDir())
		defer l.Close()
		fillSegments(t, l, 1)
		v, err := l.OpenSegment(0)
		require.NoError(t, err)
		defer v.Close()
		got := overTCP(t, v.WriteTo)
		require.Equal(t, v.Size(), int64(len(got)))
		stracetest.Report("exported", int64(len(got)))
		return
	}
	out, calls := stracetest.Run(t, "sendfile")
	want, moved := stracetest.Reported(t, out, "exported"), stracetest.Sum(calls)
	t.Logf("sendfile calls %d moved %d bytes of %d exported", len(calls), moved, want)
	assert.NotEmpty(t, calls)
	assert.Equal(t, want, moved, "every exported byte went by sendfile")
}

// sealedFiles returns the bytes and info of every sealed segment of l.
func sealedFiles(t *testing.T, path string, l *Log) ([]SegmentInfo, [][]byte) {
	t.Helper()
	var infos []SegmentInfo
	var files [][]byte
	for _, si := range l.Segments() {
		if !si.Sealed {
			continue
		}
		b, err := os.ReadFile(filepath.Join(path, si.File))
		require.NoError(t, err)
		infos, files = append(infos, si), append(files, b)
	}
	return infos, files
}

// requireNoImportLeft checks that a refused import left nothing behind.
func requireNoImportLeft(t *testing.T, path string, l *Log, segments int) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(path, "*"+tmpSuffix))
	assert.Empty(t, left, "no temporary file survives a refused import")
	assert.Len(t, l.Segments(), segments)
}

// TestImportSegments: a follower imports a leader's sealed segments over
// TCP; its files are byte-identical and survive a reopen.
func TestImportSegments(t *testing.T) {
	leaderPath, followerPath := t.TempDir(), t.TempDir()
	leader := realLog(t, leaderPath)
	defer leader.Close()
	fillSegments(t, leader, 3)
	require.NoError(t, leader.TruncateFront(leader.Segments()[1].Base)) // the follower starts past 0
	infos, files := sealedFiles(t, leaderPath, leader)

	follower := realLog(t, followerPath)
	for i, si := range infos {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				c.Write(files[i])
				c.Close()
			}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		require.NoError(t, err)
		got, err := follower.ImportSegment(c, si.Base, int64(len(files[i])))
		c.Close()
		ln.Close()
		require.NoError(t, err, "segment %d", si.Base)
		assert.Equal(t, si.Next, got.Next)
	}
	assert.Equal(t, infos[0].Base, follower.StartOffset())
	assert.Equal(t, infos[len(infos)-1].Next, follower.EndOffset())
	got, _ := sealedFiles(t, followerPath, follower)
	require.Equal(t, infos, got, "same names, ranges and sizes")
	_, fileCopies := sealedFiles(t, followerPath, follower)
	for i := range files {
		require.Equal(t, files[i], fileCopies[i], "segment %d byte-identical", infos[i].Base)
	}
	rec, err := follower.Read(infos[1].Base+3, nil)
	require.NoError(t, err)
	want, _ := leader.Read(infos[1].Base+3, nil)
	assert.Equal(t, want, rec)
	_, err = follower.Append([]byte("after the imports"))
	require.NoError(t, err)
	require.NoError(t, follower.Close())

	follower, err = Open(followerPath, DefaultOptions())
	require.NoError(t, err)
	defer follower.Close()
	assert.Equal(t, infos[len(infos)-1].Next+1, follower.EndOffset())
}

func TestImportRefusals(t *testing.T) {
	leaderPath := t.TempDir()
	leader := realLog(t, leaderPath)
	defer leader.Close()
	fillSegments(t, leader, 2)
	infos, files := sealedFiles(t, leaderPath, leader)

	flipped := bytes.Clone(files[0])
	flipped[wal.DataStart+100] ^= 0x10
	// A sealed segment of a leader whose options exceed the follower's.
	foreign := func(change func(*Options)) []byte {
		opts := realOptions()
		change(&opts)
		path := t.TempDir()
		l, err := Open(path, opts)
		require.NoError(t, err)
		defer l.Close()
		fillSegments(t, l, 1)
		_, files := sealedFiles(t, path, l)
		return files[0]
	}
	// Sealed files a peer can forge: every frame and the footer's frame
	// checksummed, the footer's fields in range.
	empty := handSealed(t, 0, 0, nil)
	lying := handSealed(t, 0, 10, func(f []handFrame) []indexEntry { // frame 5's offset at frame 6's position
		return []indexEntry{f[0].entry(), f[6].entry().with(f[5].First, f[5].Time)}
	})
	badTime := handSealed(t, 0, 10, func(f []handFrame) []indexEntry {
		return []indexEntry{f[0].entry(), f[5].entry().with(f[5].First, f[5].Time+1)}
	})
	pastLast := handSealed(t, 0, 2, func(f []handFrame) []indexEntry { // inside the last frame
		e := f[1].entry()
		e.off, e.pos, e.before, e.left = e.off+1, e.pos+8, 1, 7
		return []indexEntry{f[0].entry(), e}
	})
	bigWrites := foreign(func(o *Options) { o.MaxWrite *= 2 })
	sparse := foreign(func(o *Options) { o.IndexInterval = 200 << 10 })
	tests := []struct {
		name string
		data []byte
		base uint64
		size int64
		want []error
		msg  string
	}{
		{"truncated stream", files[0][:len(files[0])/2], 0, int64(len(files[0])), []error{ErrImport}, "stream ended"},
		{"flipped byte", flipped, 0, int64(len(flipped)), []error{ErrImport, ErrCorrupt}, "checksum"},
		{"wrong base offset", files[1], 0, int64(len(files[1])), []error{ErrImport, ErrCorrupt}, "base offset"},
		{"gap with the log", files[1], infos[1].Base + 10, int64(len(files[1])), []error{ErrImport}, "gap"},
		{"not a segment", bytes.Repeat([]byte{7}, 8192), 0, 8192, []error{ErrImport}, ""},
		{"larger than the log's segments", files[0], 0, leader.MaxImportSize() + 1, []error{ErrImport}, "open it with options at least the peer's"},
		{"writes larger than the log's", bigWrites, 0, int64(len(bigWrites)), []error{ErrImport, ErrCorrupt}, "open it with MaxWrite at least"},
		{"index sparser than the log's", sparse, 0, int64(len(sparse)), []error{ErrImport, ErrCorrupt}, "open it with IndexInterval at least"},
		{"sealed with no records", empty, 0, int64(len(empty)), []error{ErrImport}, "sealed with no records"},
		{"index entry at another frame's position", lying, 0, int64(len(lying)), []error{ErrImport, ErrCorrupt}, "index entry 1 (offset 40"},
		{"index entry with another time", badTime, 0, int64(len(badTime)), []error{ErrImport, ErrCorrupt}, "does not match a record"},
		{"index entry inside the last frame", pastLast, 0, int64(len(pastLast)), []error{ErrImport, ErrCorrupt}, "does not match a record"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := t.TempDir()
			l := realLog(t, path)
			defer l.Close()
			if tc.name == "gap with the log" {
				_, err := l.ImportSegment(bytes.NewReader(files[0]), 0, int64(len(files[0])))
				require.NoError(t, err)
			}
			before := len(l.Segments())
			_, err := l.ImportSegment(bytes.NewReader(tc.data), tc.base, tc.size)
			for _, w := range tc.want {
				require.ErrorIs(t, err, w)
			}
			assert.ErrorContains(t, err, tc.msg)
			requireNoImportLeft(t, path, l, before)
			_, err = l.Append([]byte("still writable"))
			assert.NoError(t, err)
			end := l.EndOffset()
			require.NoError(t, l.Close())
			l, err = Open(path, realOptions())
			require.NoError(t, err, "the directory opens after a refused import")
			assert.Equal(t, end, l.EndOffset())
			rec, err := l.Read(end-1, nil)
			require.NoError(t, err)
			assert.Equal(t, "still writable", string(rec))
		})
	}
}

// handFrame is a records frame handSealed wrote: its first offset, its
// position and its time.
type handFrame struct {
	First     uint64
	Pos, Time int64
}

// entry is the index entry of the frame's first record (of 8).
func (f handFrame) entry() indexEntry {
	return indexEntry{off: f.First, pos: f.Pos + wal.FrameHeaderLen, time: f.Time, back: wal.FrameHeaderLen, left: 8}
}

// with is e naming offset off and time ts.
func (e indexEntry) with(off uint64, ts int64) indexEntry {
	e.off, e.time = off, ts
	return e
}

// handSealed writes, with the wal writer, a sealed segment file at base of
// batches frames (8 records each) whose footer's index is what index
// returns for the frames written (a footer without entries if nil): a file
// as a hostile peer can send it, every checksum right.
func handSealed(t *testing.T, base uint64, batches int, index func([]handFrame) []indexEntry) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "hand.seg")
	dev, err := blockdev.Open(path, blockdev.Options{Create: true, Buffered: true})
	require.NoError(t, err)
	var frames []handFrame
	w, err := wal.Create(dev, base, wal.Options{MaxWrite: 64 << 10, OnReserve: func(first uint64, pos, ts int64, _ [][]byte) {
		frames = append(frames, handFrame{First: first, Pos: pos, Time: ts})
	}})
	require.NoError(t, err)
	for b := range batches {
		batch := make([][]byte, 8)
		for i := range batch {
			batch[i] = []byte(fmt.Sprintf("record %d.%d %s", b, i, bytes.Repeat([]byte{'y'}, 1000)))
		}
		_, err := w.Append(batch...)
		require.NoError(t, err)
	}
	require.NoError(t, w.Sync())
	end, next := w.Durable()
	var entries []layout.IndexEntry
	if index != nil {
		for _, e := range index(frames) {
			entries = append(entries, e.layout())
		}
	}
	footer := layout.EncodeFooterV2(w.Header().SegmentID, base, next-base, end, 4096, entries)
	_, err = w.Seal(footer)
	require.NoError(t, err)
	require.NoError(t, dev.Close())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// activePrefix returns the durable start of l's active segment file (what a
// follower tailing it has received) and the segment's info.
func activePrefix(t *testing.T, path string, l *Log) ([]byte, SegmentInfo) {
	t.Helper()
	segs := l.Segments()
	si := segs[len(segs)-1]
	require.False(t, si.Sealed)
	b, err := os.ReadFile(filepath.Join(path, si.File))
	require.NoError(t, err)
	return b[:si.ExportSize()], si
}

// TestImportActive: a follower that holds the leader's sealed segments
// takes the durable start of its active segment as its own active segment:
// the records are readable, appends continue after them, the file's prefix
// is the leader's byte for byte, and all of it survives a reopen.
func TestImportActive(t *testing.T) {
	leaderPath, followerPath := t.TempDir(), t.TempDir()
	leader := realLog(t, leaderPath)
	defer leader.Close()
	fillSegments(t, leader, 1)
	_, err := leader.Append([]byte("in the active segment"), []byte("and another"))
	require.NoError(t, err)
	infos, files := sealedFiles(t, leaderPath, leader)
	prefix, si := activePrefix(t, leaderPath, leader)

	follower := realLog(t, followerPath)
	for i := range infos {
		_, err := follower.ImportSegment(bytes.NewReader(files[i]), infos[i].Base, int64(len(files[i])))
		require.NoError(t, err)
	}
	got, err := follower.ImportActive(bytes.NewReader(prefix), si.Base, int64(len(prefix)))
	require.NoError(t, err)
	assert.Equal(t, si.Next, got.Next)
	assert.False(t, got.Sealed)
	require.Equal(t, leader.EndOffset(), follower.EndOffset())
	rec, err := follower.Read(si.Next-1, nil)
	require.NoError(t, err)
	assert.Equal(t, "and another", string(rec))

	first, err := follower.Append([]byte("written after the takeover"))
	require.NoError(t, err)
	assert.Equal(t, si.Next, first)
	require.NoError(t, follower.Close())

	follower, err = Open(followerPath, DefaultOptions())
	require.NoError(t, err)
	defer follower.Close()
	assert.Equal(t, si.Next+1, follower.EndOffset())
	for _, off := range []uint64{0, si.Base, si.Next - 1, si.Next} {
		want, err := leader.Read(off, nil)
		if off == si.Next {
			want, err = []byte("written after the takeover"), nil
		}
		require.NoError(t, err)
		rec, err := follower.Read(off, nil)
		require.NoError(t, err, "offset %d", off)
		assert.Equal(t, want, rec, "offset %d", off)
	}
	b, err := os.ReadFile(filepath.Join(followerPath, si.File))
	require.NoError(t, err)
	assert.Equal(t, prefix, b[:len(prefix)], "the leader's bytes, byte for byte")
}

func TestImportActiveRefusals(t *testing.T) {
	leaderPath := t.TempDir()
	leader := realLog(t, leaderPath)
	defer leader.Close()
	fillSegments(t, leader, 1)
	for range 3 {
		_, err := leader.Append([]byte("active record one"), []byte("active record two"))
		require.NoError(t, err)
	}
	infos, files := sealedFiles(t, leaderPath, leader)
	prefix, si := activePrefix(t, leaderPath, leader)
	flipped := bytes.Clone(prefix)
	flipped[len(flipped)-20] ^= 0x10

	tests := []struct {
		name  string
		empty bool         // the log holds nothing; otherwise the leader's sealed segments
		setup func(l *Log) // before the import
		data  []byte
		base  uint64
		want  []error
		msg   string
	}{
		{"partial last frame", false, nil, prefix[:len(prefix)-10], si.Base, []error{ErrImport, ErrCorrupt}, "partial"},
		{"flipped byte", false, nil, flipped, si.Base, []error{ErrImport, ErrCorrupt}, "checksum"},
		{"sealed segment", true, nil, files[0], infos[0].Base, []error{ErrImport, ErrCorrupt}, "ImportSegment"},
		{"wrong base offset", false, nil, prefix, si.Base + 1, []error{ErrImport}, "gap"},
		{"records already appended", false, func(l *Log) {
			_, err := l.Append([]byte("local"))
			require.NoError(t, err)
		}, prefix, si.Base, []error{ErrImport}, "already holds records"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := t.TempDir()
			l := realLog(t, path)
			defer l.Close()
			for i := range infos {
				if tc.empty {
					break
				}
				_, err := l.ImportSegment(bytes.NewReader(files[i]), infos[i].Base, int64(len(files[i])))
				require.NoError(t, err)
			}
			if tc.setup != nil {
				tc.setup(l)
			}
			before, end := len(l.Segments()), l.EndOffset()
			_, err := l.ImportActive(bytes.NewReader(tc.data), tc.base, int64(len(tc.data)))
			for _, w := range tc.want {
				require.ErrorIs(t, err, w)
			}
			assert.ErrorContains(t, err, tc.msg)
			requireNoImportLeft(t, path, l, before)
			assert.Equal(t, end, l.EndOffset(), "nothing became visible")
			_, err = l.Append([]byte("still writable"))
			assert.NoError(t, err)
		})
	}
}

// TestImportFailingAfterItsManifestLeavesALogThatOpens: an import whose
// last step (creating the next active segment, after the manifest names
// the imported segment) fails stops the log (it takes no more changes),
// and the directory then opens with the imported segment and every record
// before it, and takes appends.
func TestImportFailingAfterItsManifestLeavesALogThatOpens(t *testing.T) {
	for _, prealloc := range []bool{false, true} {
		t.Run(fmt.Sprintf("preallocate=%v", prealloc), func(t *testing.T) {
			leaderPath, path := t.TempDir(), t.TempDir()
			leader := realLog(t, leaderPath)
			defer leader.Close()
			fillSegments(t, leader, 2)
			infos, files := sealedFiles(t, leaderPath, leader)
			opts := realOptions()
			opts.NoPreallocate = !prealloc
			l, err := Open(path, opts)
			require.NoError(t, err)
			_, err = l.ImportSegment(bytes.NewReader(files[0]), infos[0].Base, int64(len(files[0])))
			require.NoError(t, err)
			// A directory where the next active segment's file goes: its
			// creation fails (as on a full or failing disk).
			obstacle := filepath.Join(path, segName(infos[1].Next))
			require.NoError(t, os.Mkdir(obstacle, 0o755))
			_, err = l.ImportSegment(bytes.NewReader(files[1]), infos[1].Base, int64(len(files[1])))
			require.Error(t, err)
			assert.ErrorContains(t, err, "takes no more changes")
			_, err = l.Append([]byte("refused"))
			require.Error(t, err, "the log stopped")
			require.NoError(t, l.Close())
			require.NoError(t, os.Remove(obstacle))

			l, err = Open(path, opts)
			require.NoError(t, err, "the directory opens after the failed import")
			defer l.Close()
			require.Equal(t, infos[1].Next, l.EndOffset(), "the imported segment is the log's")
			for off := infos[0].Base; off < infos[1].Next; off++ {
				want, err := leader.Read(off, nil)
				require.NoError(t, err)
				got, err := l.Read(off, nil)
				require.NoError(t, err, "offset %d", off)
				require.Equal(t, want, got, "offset %d", off)
			}
			_, err = l.Append([]byte("after the reopen"))
			require.NoError(t, err)
		})
	}
}
