package wal

import (
	"bytes"
	"fmt"
	"os"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// flipFile is a small, fully acknowledged wal file: what every bit-flip
// sweep starts from.
type flipFile struct {
	image   []byte
	records map[uint64][]byte // every acknowledged record
	end     int64             // where the frames end: every byte before is acknowledged
}

// buildFlipFile appends batches one after another in SyncAlways mode (each
// acknowledged before the next starts) and then, in SyncNever mode, a
// group of batches that share one flush. Some records hold whole zero
// sectors, the content a torn write leaves, so that damage elsewhere in
// their frames must still be told from a tear.
func buildFlipFile(t *testing.T) flipFile {
	t.Helper()
	dev := blockdev.NewSim(blockdev.SimOptions{Name: "flip"})
	w, err := Create(dev, 7, Options{MaxWrite: 16 << 10, Preallocate: 24 << 10, PreZero: true})
	require.NoError(t, err)
	ff := flipFile{records: map[uint64][]byte{}}
	next := uint64(7)
	add := func(w *Writer, recs ...[]byte) {
		first, err := w.Append(recs...)
		require.NoError(t, err)
		require.Equal(t, next, first)
		for _, r := range recs {
			ff.records[next] = r
			next++
		}
	}
	zeros := func(off uint64) []byte { // a record with two whole zero sectors inside
		r := testutil.Record(off, 1500)
		clear(r[100:1400])
		return r
	}
	for i := 0; i < 8; i++ {
		if i == 3 {
			add(w, zeros(next), testutil.Record(next+1, 40))
			continue
		}
		add(w, batch(next, 1+i%3)...)
	}
	require.NoError(t, w.Close())
	w, _, err = Open(dev, Options{SyncMode: SyncNever})
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		add(w, batch(next, 2)...)
	}
	add(w, zeros(next))
	require.NoError(t, w.Close())
	rec, err := Recover(dev)
	require.NoError(t, err)
	require.Equal(t, next, rec.NextOffset)
	ff.image, ff.end = dev.Bytes(), rec.End
	return ff
}

// flip is one bit of a file to flip.
type flip struct {
	pos int64
	bit uint
}

// flips lists the bits a sweep flips in image, whose frames end at end:
// with SEGSTORE_LONG=1 every bit of the file; by default every bit of the
// file header and of every frame header (where a flip changes how the rest
// is read), one bit of every payload byte (rotating through the eight), and
// one bit of every 16th byte of the header block's padding and of the 8 KiB
// of zeros after the frames.
func flips(t *testing.T, image []byte, end int64) []flip {
	var fs []flip
	every := func(from, to int64, step int64, allBits bool) {
		for p := from; p < min(to, int64(len(image))); p += step {
			if allBits || testutil.Long() {
				for b := uint(0); b < 8; b++ {
					fs = append(fs, flip{p, b})
				}
			} else {
				fs = append(fs, flip{p, uint(p % 8)})
			}
		}
	}
	if testutil.Long() {
		every(0, int64(len(image)), 1, true)
		return fs
	}
	every(0, FileHeaderLen, 1, true)
	every(FileHeaderLen, DataStart, 16, false)
	s, err := NewScanner(blockdev.NewSimFrom(image, blockdev.SimOptions{}))
	require.NoError(t, err)
	for s.Next() {
		f := s.Frame()
		every(f.Pos, f.Pos+FrameHeaderLen, 1, true)
		every(f.Pos+FrameHeaderLen, f.End(), 1, false)
	}
	require.NoError(t, s.Err())
	every(end, end+8<<10, 16, false)
	return fs
}

// checkFlip recovers img, the file with one bit flipped at pos, and checks
// the promise: a flip in acknowledged bytes (before end) is reported as
// corruption at or before the flipped byte; a flip after them (in the
// zeros no write reached) may be cut as a torn tail or reported, and every
// acknowledged record comes back exact.
func checkFlip(t *testing.T, img []byte, pos, end int64, records map[uint64][]byte) {
	dev := blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "flip"})
	got, rec, err := tryReadAll(dev)
	if err != nil {
		if pos < int64(len(Magic)) {
			// A file that does not start with the magic is not taken for a
			// wal file at all (the engine reports it as a damaged segment).
			require.ErrorIs(t, err, ErrNotWAL, "byte %d", pos)
			return
		}
		var ce *CorruptionError
		require.ErrorAs(t, err, &ce, "byte %d: a flip is corruption, never another error", pos)
		require.LessOrEqual(t, ce.Position, pos, "byte %d: reported at %d, after the damage", pos, ce.Position)
		return
	}
	require.GreaterOrEqual(t, pos, end, "byte %d: a flip in acknowledged data was not reported as corruption (torn: %+v)", pos, rec.Torn)
	require.Len(t, got, len(records), "byte %d: acknowledged records lost", pos)
	for off, want := range records {
		require.True(t, bytes.Equal(want, got[off]), "byte %d: record %d differs", pos, off)
	}
}

// TestEveryBitFlip flips the bits of a small file (see flips: every bit
// with SEGSTORE_LONG=1), one at a time, and recovers it: no flip in acknowledged bytes is taken for a torn tail (which
// would cut acknowledged records), none returns wrong bytes.
func TestEveryBitFlip(t *testing.T) {
	ff := buildFlipFile(t)
	img := make([]byte, len(ff.image))
	fs := flips(t, ff.image, ff.end)
	for _, f := range fs {
		copy(img, ff.image)
		img[f.pos] ^= 1 << f.bit
		checkFlip(t, img, f.pos, ff.end, ff.records)
	}
	t.Logf("%d single-bit flips (frames end at %d)", len(fs), ff.end)
}

// TestEveryBitFlipVersion1 is the sweep over a file written by format
// version 1 (testdata/v1-frames.wal, frames without durable marks): it
// stays readable, and no flip in it is cut as a torn tail either.
func TestEveryBitFlipVersion1(t *testing.T) {
	image, err := os.ReadFile("testdata/v1-frames.wal")
	require.NoError(t, err)
	dev := blockdev.NewSimFrom(image, blockdev.SimOptions{Name: "v1"})
	got, rec := readAll(t, dev)
	require.Nil(t, rec.Torn)
	require.EqualValues(t, 1, rec.Header.Version)
	require.Len(t, got, 24)
	off := uint64(100)
	for i := 0; i < 12; i++ { // how testdata/v1-frames.wal was written
		for j := 0; j <= i%3; j++ {
			require.Equal(t, fmt.Sprintf("v1 record %d.%d", i, j), string(got[off]), "record %d", off)
			off++
		}
	}
	img := make([]byte, len(image))
	for _, f := range flips(t, image, rec.End) {
		copy(img, image)
		img[f.pos] ^= 1 << f.bit
		checkFlip(t, img, f.pos, rec.End, got)
	}
}

// TestFlippedLengthOfEveryFrame is the case that started the sweep, spelled
// out: each bit of each frame's length field, in a file of 20 acknowledged
// frames. None may cut the frames after it, nor the frame itself.
func TestFlippedLengthOfEveryFrame(t *testing.T) {
	tf := buildFile(t, 20, 128<<10)
	for i, f := range tf.frames {
		for bit := 0; bit < 32; bit++ {
			img := append([]byte(nil), tf.image...)
			img[f.Pos+8+int64(bit/8)] ^= 1 << (bit % 8)
			_, err := Recover(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
			require.ErrorIs(t, err, ErrCorrupt, fmt.Sprintf("frame %d, length bit %d", i, bit))
		}
	}
}

// TestAppendToVersion1File: a version 1 file takes appends, and stays
// version 1 (frames without marks), so older readers still read it.
func TestAppendToVersion1File(t *testing.T) {
	image, err := os.ReadFile("testdata/v1-frames.wal")
	require.NoError(t, err)
	dev := blockdev.NewSimFrom(image, blockdev.SimOptions{Name: "v1"})
	w, _, err := Open(dev, Options{})
	require.NoError(t, err)
	first, err := w.Append(batch(124, 3)...)
	require.NoError(t, err)
	require.EqualValues(t, 124, first)
	require.NoError(t, w.Close())
	s, err := NewScanner(dev)
	require.NoError(t, err)
	require.EqualValues(t, 1, s.Header().Version)
	frames := 0
	for s.Next() {
		b := dev.Bytes()[s.Frame().Pos:]
		h, err := DecodeFrameHeader(b, 1<<20)
		require.NoError(t, err)
		_, marked := h.DurableBefore(s.Frame().Pos)
		require.False(t, marked, "frame at %d of a version 1 file has a durable mark", s.Frame().Pos)
		frames++
	}
	require.NoError(t, s.Err())
	require.Equal(t, 13, frames)
}

// TestDurableMarks: each frame of a new file says how far the file was
// durable when it was made: never past the frame, and, for appends made one
// after another, exactly where the previous one ended.
func TestDurableMarks(t *testing.T) {
	tf := buildFile(t, 10, 0)
	prevEnd := int64(DataStart)
	for _, f := range tf.frames {
		h, err := DecodeFrameHeader(tf.image[f.Pos:], 1<<20)
		require.NoError(t, err)
		d, ok := h.DurableBefore(f.Pos)
		require.True(t, ok)
		require.Equal(t, prevEnd, d, "frame at %d", f.Pos)
		prevEnd = f.End()
	}
}
