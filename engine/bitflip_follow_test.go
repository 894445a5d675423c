package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// followFlipOptions are the options of the logs the follow sweeps build:
// small segments, files not preallocated (a file is as long as what it
// holds, so every byte of it is one the sweep flips), every append synced
// (the writer acknowledges each at once).
func followFlipOptions(d *blockdev.SimDir, readOnly bool) Options {
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.IndexInterval, o.CacheBytes, o.Logger = 64<<10, 32<<10, 1024, flipCacheBytes, quiet
	o.NoPreallocate, o.SyncMode, o.Dir, o.ReadOnly = true, SyncAlways, d, readOnly
	return o
}

// appendFlipRecords appends n batches of three flip records.
func appendFlipRecords(t *testing.T, l *Log, n int) {
	t.Helper()
	for range n {
		first := l.EndOffset()
		_, err := l.Append(flipRecord(first), flipRecord(first+1), flipRecord(first+2))
		require.NoError(t, err)
	}
	settle(l)
}

// byteFlips lists the bits of a file of size bytes the follow sweeps
// flip: every bit of the file header and of everything from footer on
// (the footer, or for an active file its last frames), and of the rest one
// bit of every stride-th byte (rotating through the eight); every bit of
// every byte with SEGSTORE_LONG=1.
func byteFlips(size, footer int64, stride int) (out []storeFlip) {
	for p := range size {
		every := testutil.Long() || p < wal.FileHeaderLen || p >= footer
		switch {
		case every:
			for b := uint(0); b < 8; b++ {
				out = append(out, storeFlip{pos: int(p), bit: b})
			}
		case p%int64(stride) == 0:
			out = append(out, storeFlip{pos: int(p), bit: uint(p/int64(stride)) % 8})
		}
	}
	return out
}

// atByte finds the byte position a damage message names.
var atByte = regexp.MustCompile(`at byte \d+`)

// adviceMarks are the pieces of advice a damage message may end with, the
// engine's and the wal's: a message holds exactly one.
var adviceMarks = []string{
	"keep a copy and inspect it before repairing",
	"nothing of it was imported",
	"inspect it and repair explicitly",
}

// requireDamageSaysWhere checks that err reports damage to file: it
// matches ErrCorrupt, names the file and a byte position, and says what to
// do exactly once, with no wal message nested in an engine one.
func requireDamageSaysWhere(t *testing.T, what string, err error, file string) {
	t.Helper()
	require.True(t, errors.Is(err, ErrCorrupt) && errors.Is(err, wal.ErrCorrupt), "%s: not damage: %v", what, err)
	msg := err.Error()
	require.Contains(t, msg, file, "%s: the message does not name the file", what)
	require.Regexp(t, atByte, msg, "%s: the message names no byte position", what)
	advice := 0
	for _, a := range adviceMarks {
		advice += strings.Count(msg, a)
	}
	require.Equal(t, 1, advice, "%s: pieces of advice in %q", what, msg)
	if strings.Contains(msg, "engine: ") {
		require.NotContains(t, msg, "wal: corruption", "%s: a wal message nested in an engine one", what)
	}
}

// requireRecordsExact reads [start, end) of l by offset and by an
// iterator: every record must come back exact (a damage error is accepted
// only where damaged is true: the reads may reach a flipped byte).
func requireRecordsExact(t *testing.T, what string, l *Log, start, end uint64, damaged bool, file string) {
	t.Helper()
	for off := start; off < end; off++ {
		got, err := l.Read(off, nil)
		if err != nil && damaged {
			requireDamageSaysWhere(t, fmt.Sprintf("%s: read %d", what, off), err, file)
			continue
		}
		require.NoError(t, err, "%s: read %d", what, off)
		require.True(t, bytes.Equal(flipRecord(off), got), "%s: read %d returned wrong bytes", what, off)
	}
	it := l.NewIterator(start)
	defer it.Close()
	off := start
	for it.Next() {
		require.Equal(t, off, it.Offset(), "%s: iterator", what)
		require.True(t, bytes.Equal(flipRecord(off), it.Record()), "%s: iterator at %d returned wrong bytes", what, off)
		off++
	}
	if it.Err() != nil && damaged {
		requireDamageSaysWhere(t, fmt.Sprintf("%s: iterator at %d", what, off), it.Err(), file)
		return
	}
	require.NoError(t, it.Err(), "%s: iterator", what)
	require.Equal(t, end, off, "%s: the iterator stopped early", what)
}

// TestEveryBitFlipOfAnImport flips bits of a sealed segment file (a
// leader's second one, of three) one at a time and imports it into a
// follower with no records: the import either takes it and every record
// of it reads back exact, or refuses it as damage (ErrImport and
// ErrCorrupt) with a message that names the segment's file and a byte
// position and says what to do once, and the follower is as it was (no
// record, no file left behind). See byteFlips for which bits.
func TestEveryBitFlipOfAnImport(t *testing.T) {
	leaderDir := blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	leader, err := Open("sim", followFlipOptions(leaderDir, false))
	require.NoError(t, err)
	for range 3 {
		appendFlipRecords(t, leader, 12)
		require.NoError(t, leader.Roll())
	}
	appendFlipRecords(t, leader, 4)
	seg := leader.Segments()[1]
	require.True(t, seg.Sealed)
	orig := leaderDir.File(seg.File).Bytes()[:seg.Bytes]
	require.NoError(t, leader.Close())

	var follower *Log
	var followerDir *blockdev.SimDir
	fresh := func() {
		if follower != nil {
			require.NoError(t, follower.Close())
		}
		followerDir = blockdev.NewSimDir(blockdev.SimOptions{Seed: 2})
		follower, err = Open("sim", followFlipOptions(followerDir, false))
		require.NoError(t, err)
	}
	fresh()
	defer func() { require.NoError(t, follower.Close()) }()
	files, err := followerDir.List()
	require.NoError(t, err)

	// The file as it is imports.
	_, err = follower.ImportSegment(bytes.NewReader(orig), seg.Base, seg.Bytes)
	require.NoError(t, err)
	requireRecordsExact(t, "unflipped", follower, seg.Base, seg.Next, false, seg.File)
	fresh()

	flips := byteFlips(seg.Bytes, seg.DataEnd, 61)
	taken, refused := 0, 0
	b := bytes.Clone(orig)
	for _, f := range flips {
		what := fmt.Sprintf("%s byte %d bit %d", seg.File, f.pos, f.bit)
		b[f.pos] ^= 1 << f.bit
		info, err := follower.ImportSegment(bytes.NewReader(b), seg.Base, seg.Bytes)
		b[f.pos] ^= 1 << f.bit
		if err == nil {
			taken++
			require.Equal(t, seg.Next, info.Next, "%s: imported", what)
			requireRecordsExact(t, what, follower, seg.Base, seg.Next, false, seg.File)
			fresh()
			continue
		}
		refused++
		require.ErrorIs(t, err, ErrImport, what)
		requireDamageSaysWhere(t, what, err, seg.File)
		require.Equal(t, follower.StartOffset(), follower.EndOffset(), "%s: a refused import left records", what)
		left, err := followerDir.List()
		require.NoError(t, err)
		require.Equal(t, files, left, "%s: a refused import left files", what)
	}
	t.Logf("%d flips of %s (%d bytes): %d imported, %d refused", len(flips), seg.File, seg.Bytes, taken, refused)
}

// refreshFlip is the store a read-only log follows in the refresh sweep,
// at the point where the reader is to look again.
type refreshFlip struct {
	dir            *blockdev.SimDir
	writer, reader *Log
	start          uint64
	rolled, next   SegmentInfo // the segment the reader was following, sealed since, and the writer's new one
	opened         dirImage    // the directory as it was when the reader opened
}

// buildRefreshFlip writes two sealed segments and an active one, opens a
// reader on them, then has the writer append to the active segment, roll
// it and append to the new one: what the reader's next Refresh reads is
// the rest and the footer of the rolled segment and all of the new one.
func buildRefreshFlip(t *testing.T) refreshFlip {
	t.Helper()
	r := refreshFlip{dir: blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})}
	var err error
	r.writer, err = Open("sim", followFlipOptions(r.dir, false))
	require.NoError(t, err)
	for range 2 {
		appendFlipRecords(t, r.writer, 12)
		require.NoError(t, r.writer.Roll())
	}
	appendFlipRecords(t, r.writer, 6)
	r.reader, err = Open("sim", followFlipOptions(r.dir, true))
	require.NoError(t, err)
	require.Equal(t, r.writer.EndOffset(), r.reader.EndOffset())
	r.opened = imageOf(t, r.dir)
	appendFlipRecords(t, r.writer, 6)
	require.NoError(t, r.writer.Roll())
	settle(r.writer)
	appendFlipRecords(t, r.writer, 4)
	segs := r.writer.Segments()
	r.rolled, r.next, r.start = segs[2], segs[3], r.writer.StartOffset()
	require.True(t, r.rolled.Sealed)
	return r
}

func (r refreshFlip) close(t *testing.T) {
	t.Helper()
	require.NoError(t, r.reader.Close())
	require.NoError(t, r.writer.Close())
}

// TestRefreshReportsADamagedHeaderOfALiveFile: the header of the writer's
// new active segment, which holds records the writer acknowledged, is
// damaged (its magic's first bit flipped). Refresh reports the damage,
// naming the file and the byte; it showed the log up to the file's base
// as if the header were not written yet, and a Wait for the acknowledged
// records would have waited for ever.
func TestRefreshReportsADamagedHeaderOfALiveFile(t *testing.T) {
	r := buildRefreshFlip(t)
	defer r.close(t)
	require.Greater(t, r.next.Next, r.next.Base, "the new segment holds acknowledged records")
	r.dir.File(r.next.File).FlipBit(0, 0)
	_, err := r.reader.Refresh()
	require.ErrorIs(t, err, ErrCorrupt, "shown up to %d of %d", r.reader.EndOffset(), r.writer.DurableOffset())
	requireDamageSaysWhere(t, "refresh", err, r.next.File)
}

// dirImage is a copy of the files of a simulated directory at one point:
// the bytes of each, and the words of its DURABLE file, which a writer
// stores into the mapping (they are not in the file's bytes). It lets a
// sweep put a directory in a state a live writer left without running
// the writer again.
type dirImage struct {
	files   map[string][]byte
	durable []byte
}

// imageOf copies the files of d.
func imageOf(t *testing.T, d *blockdev.SimDir) dirImage {
	t.Helper()
	names, err := d.List()
	require.NoError(t, err)
	im := dirImage{files: map[string][]byte{}}
	for _, n := range names {
		if n != durableName {
			im.files[n] = d.File(n).Bytes()
		}
	}
	m, err := d.MapShared(durableName, durableSize, false)
	require.NoError(t, err)
	im.durable = bytes.Clone(m.Bytes())
	require.NoError(t, m.Close())
	return im
}

// liveDir makes a directory of im's files in which a writer is live: it
// holds the lock and publishes through durable, the writer's mapping of
// DURABLE (apply stores a later image's words there).
func (im dirImage) liveDir(t *testing.T) (d *blockdev.SimDir, durable blockdev.SharedMapping) {
	t.Helper()
	d = blockdev.NewSimDir(blockdev.SimOptions{Seed: 1})
	_, err := d.Lock(lockName)
	require.NoError(t, err)
	durable, err = d.MapShared(durableName, durableSize, true)
	require.NoError(t, err)
	im.apply(t, d, durable)
	return d, durable
}

// apply brings the files of d to im, as the writer's later writes do:
// it writes every file of im over the one of its name (creating it) from
// the first byte where they differ, and stores im's words into durable.
// No file of im is shorter than the one it is written over, and no file
// of d is missing from im: the writer has removed none.
func (im dirImage) apply(t *testing.T, d *blockdev.SimDir, durable blockdev.SharedMapping) {
	t.Helper()
	for name, b := range im.files {
		from := 0
		if f := d.File(name); f != nil {
			was := f.Bytes()
			require.LessOrEqual(t, len(was), len(b), name)
			for from < len(was) && was[from] == b[from] {
				from++
			}
			if from == len(b) {
				continue
			}
		}
		f, err := d.OpenPlain(name, os.O_CREATE|os.O_RDWR)
		require.NoError(t, err)
		_, err = f.WriteAt(b[from:], int64(from))
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
	names, err := d.List()
	require.NoError(t, err)
	for _, n := range names {
		_, ok := im.files[n]
		require.True(t, ok || n == durableName, "%s: removed by the writer", n)
	}
	copy(durable.Bytes(), im.durable)
}

// lastFrame returns the last frame of segment file b.
func lastFrame(t *testing.T, b []byte) (last wal.Frame) {
	t.Helper()
	sc, err := wal.NewScanner(blockdev.NewSimFrom(b, blockdev.SimOptions{}))
	require.NoError(t, err)
	for sc.Next() {
		last = sc.Frame()
	}
	require.NoError(t, sc.Err())
	require.Positive(t, last.Pos)
	return last
}

// recordsExact is requireRecordsExact's check, cheap enough to run for
// every flip of a sweep: it reads [start, end) of l by offset, last first
// (reads in order would start read-ahead, whose buffers a fresh log
// allocates), and by an iterator, and returns the first record that is
// not want's (want[i] is the record at offset i), or an error. A failing
// check is run again by requireRecordsExact, which says more.
func recordsExact(l *Log, start, end uint64, want [][]byte) error {
	var buf []byte
	for off := end; off > start; off-- {
		got, err := l.Read(off-1, buf)
		if err != nil {
			return err
		}
		if !bytes.Equal(want[off-1], got) {
			return fmt.Errorf("read %d returned wrong bytes", off-1)
		}
		buf = got[:0]
	}
	it := l.NewIterator(start)
	defer it.Close()
	off := start
	for it.Next() {
		if it.Offset() != off || !bytes.Equal(want[off], it.Record()) {
			return fmt.Errorf("the iterator returned wrong bytes at %d", off)
		}
		off++
	}
	if it.Err() != nil || off != end {
		return fmt.Errorf("the iterator stopped at %d, not %d: %v", off, end, it.Err())
	}
	return nil
}

// TestEveryBitFlipOfWhatRefreshReads flips, one at a time, bits of what
// a read-only log's Refresh reads beside a live writer (buildRefreshFlip):
// the rolled segment from where the reader had seen it to its end, footer
// included, and the whole of the writer's new segment file. Bits as
// byteFlips picks them: every bit of the file header, of the rolled
// segment's footer and of the new segment's last frame and the zeros
// after it; one bit of every 61st byte between (every bit of every byte
// with SEGSTORE_LONG=1). The default run keeps every flip of the file
// headers and one in 16 of the others; SEGSTORE_LONG=1 runs them all. Each flip gets a reader opened on the directory
// as it was when the first reader opened, whose directory is then
// brought to the writer's later state (dirImage), with the bit flipped:
// its Refresh either reports damage (ErrCorrupt, naming the file and a
// byte position, advising once) and shows what it showed before, and
// perhaps more of what the writer acknowledged, exact; or succeeds and
// shows every record the writer acknowledged, exact, and nothing more (a
// reader that stays behind with no error would wait for those records
// for ever). With the bit flipped back, the same reader's next Refresh
// shows every acknowledged record.
func TestEveryBitFlipOfWhatRefreshReads(t *testing.T) {
	r := buildRefreshFlip(t)
	defer r.close(t)
	later := imageOf(t, r.dir)
	acked := r.writer.DurableOffset()
	require.Equal(t, r.writer.EndOffset(), acked)
	shown := r.reader.EndOffset()
	var seen int64 // where the reader had seen the rolled segment to
	for _, s := range *r.reader.segs.Load() {
		if s.base == r.rolled.Base {
			seen = s.vis().pos
		}
	}
	require.Greater(t, seen, int64(wal.DataStart))
	want := make([][]byte, acked)
	for off := range acked {
		want[off] = flipRecord(off)
	}

	var flips []storeFlip
	for _, f := range byteFlips(r.rolled.Bytes, r.rolled.DataEnd, 61) {
		if int64(f.pos) >= seen {
			flips = append(flips, storeFlip{file: r.rolled.File, pos: f.pos, bit: f.bit})
		}
	}
	// The new segment: every bit of its header and of its last frame,
	// where the acknowledged end is; the zeros after it (past that end)
	// as the bytes between.
	next := later.files[r.next.File]
	last, size := lastFrame(t, next), int64(len(next))
	nextFlips := byteFlips(last.End(), last.Pos, 61)
	for _, f := range byteFlips(size, size, 61) {
		if int64(f.pos) >= last.End() {
			nextFlips = append(nextFlips, f)
		}
	}
	for _, f := range nextFlips {
		flips = append(flips, storeFlip{file: r.next.File, pos: f.pos, bit: f.bit})
	}

	// The readers share one cache (a log's own costs more to make than
	// the rest of its open).
	shared, err := cache.New(flipCacheBytes)
	require.NoError(t, err)
	defer shared.Close()
	// refresh opens a reader on the directory as it was, brings the
	// directory to the writer's later state with flip applied, and
	// refreshes the reader.
	refresh := func(flip *storeFlip) (*blockdev.SimDir, *Log, error) {
		d, durable := r.opened.liveDir(t)
		o := followFlipOptions(d, true)
		o.Cache = shared
		reader, err := Open("sim", o)
		require.NoError(t, err)
		require.Equal(t, shown, reader.EndOffset())
		later.apply(t, d, durable)
		if flip != nil {
			d.File(flip.file).FlipBit(int64(flip.pos), flip.bit)
		}
		_, err = reader.Refresh()
		return d, reader, err
	}
	exact := func(what string, l *Log, start, end uint64, file string) {
		t.Helper()
		if err := recordsExact(l, start, end, want); err != nil {
			requireRecordsExact(t, what, l, start, end, false, file)
			require.NoError(t, err, what)
		}
	}

	_, reader, err := refresh(nil)
	require.NoError(t, err)
	require.Equal(t, acked, reader.EndOffset())
	requireRecordsExact(t, "unflipped", reader, r.start, acked, false, "")
	require.NoError(t, reader.Close())

	if !testutil.Long() {
		// Every bit of the file headers; one flip in 16 of the rest, which
		// still lands in every field of the footer and the last frame.
		var some []storeFlip
		for i, f := range flips {
			if f.pos < wal.FileHeaderLen || i%16 == 0 {
				some = append(some, f)
			}
		}
		flips = some
	}
	reported, taken := 0, 0
	for _, f := range flips {
		what := fmt.Sprintf("%s byte %d bit %d", f.file, f.pos, f.bit)
		d, reader, err := refresh(&f)
		if err != nil {
			reported++
			requireDamageSaysWhere(t, what, err, f.file)
			// It may show more of what the writer acknowledged: records
			// before the damage.
			end := reader.EndOffset()
			if end < shown || end > acked {
				require.Fail(t, "a refused refresh moved the end", "%s: shows up to %d, not from %d to %d", what, end, shown, acked)
			}
			exact(what, reader, r.start, end, f.file)
		} else {
			taken++
			for range 3 { // a reader behind the writer must say why, or catch up
				if reader.EndOffset() == acked {
					break
				}
				_, err = reader.Refresh()
				require.NoError(t, err, "%s: the second refresh", what)
			}
			require.Equal(t, acked, reader.EndOffset(), "%s: the reader stays behind the writer's acknowledged end with no error", what)
			exact(what, reader, r.start, acked, f.file)
		}
		// With the flip undone, the reader shows the rest: what it
		// shows before the rolled segment was read exact above.
		d.File(f.file).FlipBit(int64(f.pos), f.bit)
		_, err = reader.Refresh()
		require.NoError(t, err, "%s: refreshed with the flip undone", what)
		require.Equal(t, acked, reader.EndOffset(), "%s: refreshed with the flip undone", what)
		exact(what+", undone", reader, r.rolled.Base, acked, f.file)
		require.NoError(t, reader.Close())
	}
	t.Logf("%d flips: %d reported as damage, %d refreshed in full", len(flips), reported, taken)
}
