package engine

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
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
