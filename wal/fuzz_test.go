package wal

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// FuzzDecodeFrame feeds arbitrary bytes to the frame decoder, as a frame of
// a file of any version: it must never panic or allocate from an unchecked
// length, and whatever it accepts must re-encode to the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	recs := [][]byte{[]byte("hello"), {}}
	for v := uint32(MinVersion); v <= Version; v++ {
		good := make([]byte, FrameSize(FileHeader{Version: v}.PayloadSize(recs)))
		encodeFrame(good, v, 7, 4096, -1, 10, 99, recs)
		f.Add(good, uint64(7), int64(4096), uint8(v))
	}
	f.Add(make([]byte, FrameHeaderLen), uint64(0), int64(0), uint8(Version))
	f.Add([]byte{1, 2, 3}, uint64(1), int64(8), uint8(2))
	f.Fuzz(func(t *testing.T, b []byte, segID uint64, pos int64, version uint8) {
		v := MinVersion + uint32(version)%(Version-MinVersion+1)
		hdr := FileHeader{Version: v, SegmentID: segID}
		h, err := DecodeFrameHeader(b, 1<<20)
		if err != nil {
			return
		}
		size := FrameSize(int(h.Length))
		if size > len(b) {
			return
		}
		payload := b[FrameHeaderLen : FrameHeaderLen+int(h.Length)]
		if VerifyFrame(h, hdr, pos, payload) != nil {
			return
		}
		if d, ok := h.DurableBefore(pos); ok && d < 0 {
			return // a mark before the file's start: no writer makes one
		}
		var recs [][]byte
		Records(v, payload, func(_ int, r []byte) bool {
			recs = append(recs, r)
			return true
		})
		require.Len(t, recs, int(h.Count))
		again := make([]byte, size)
		encodeFrame(again, v, segID, pos, durableOf(h, pos), h.First, h.Timestamp, recs)
		require.Equal(t, b[:FrameHeaderLen+int(h.Length)], again[:FrameHeaderLen+int(h.Length)])
	})
}

// fuzzFile is a valid file of frames of batch records from offset 5.
func fuzzFile(f *testing.F, frames int) []byte {
	dev := blockdev.NewSim(blockdev.SimOptions{})
	w, err := Create(dev, 5, Options{MaxWrite: 16 << 10})
	if err != nil {
		f.Fatal(err)
	}
	for i := 0; i < frames; i++ {
		if _, err := w.Append(batch(5+uint64(i)*2, 2)...); err != nil {
			f.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		f.Fatal(err)
	}
	return dev.Bytes()
}

// FuzzRecover runs recovery over arbitrary damage to a valid file: it must
// never panic, and it either reports corruption or returns frames that all
// verify, with contiguous offsets.
func FuzzRecover(f *testing.F) {
	base := fuzzFile(f, 6)
	f.Add(uint32(4100), byte(0xff), uint16(0))
	f.Add(uint32(4096), byte(0), uint16(600))
	f.Add(uint32(5000), byte(1), uint16(3))
	f.Fuzz(func(t *testing.T, at uint32, xor byte, cut uint16) {
		img := append([]byte(nil), base...)
		if int(at) < len(img) {
			img[at] ^= xor
		}
		img = img[:len(img)-min(int(cut), len(img))]
		s, err := NewScanner(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
		if err != nil {
			return
		}
		next := uint64(5)
		for s.Next() {
			fr := s.Frame()
			require.Equal(t, next, fr.First)
			next += uint64(fr.Count)
			Records(Version, fr.Payload, func(i int, r []byte) bool {
				o := fr.First + uint64(i)
				require.Equal(t, testutil.Record(o, recordSize(o)), r, "record %d returned with wrong bytes", o)
				return true
			})
		}
	})
}

// FuzzRecoverFrameBytes: recovery of arbitrary frame bytes under a valid
// header (any MaxWrite a writer uses, any segment id) must not panic and
// must return only frames that verify; seeded with real frames.
func FuzzRecoverFrameBytes(f *testing.F) {
	img := fuzzFile(f, 4)
	hdr, err := DecodeFileHeader(img)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(img[DataStart:], uint32(28), hdr.SegmentID)
	f.Add(img[DataStart:DataStart+600], uint32(0), hdr.SegmentID)
	f.Fuzz(func(t *testing.T, frames []byte, mw uint32, seg uint64) {
		if len(frames) > 1<<16 {
			return
		}
		img := make([]byte, DataStart+len(frames))
		maxWrite := 2048 + mw%255*512 // 2 KiB to 129 KiB, in sectors
		EncodeFileHeader(img, FileHeader{SegmentID: seg, BaseOffset: 5, MaxWrite: maxWrite})
		copy(img[DataStart:], frames)
		s, err := NewScanner(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
		require.NoError(t, err)
		for s.Next() {
			fr := s.Frame()
			h, err := DecodeFrameHeader(img[fr.Pos:], int(maxWrite))
			require.NoError(t, err)
			require.NoError(t, VerifyFrame(h, s.Header(), fr.Pos, fr.Payload), "frame at %d returned without verifying", fr.Pos)
		}
	})
}
