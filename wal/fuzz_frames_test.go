package wal

import (
	"testing"

	"github.com/segstore/segstore/blockdev"
)

// FuzzRecoverFrameBytes: recovery of arbitrary frame bytes under a valid
// header (any maxWrite) must not panic and must return only frames that
// verify; seeded with real frames so the fuzzer starts from valid ones.
func FuzzRecoverFrameBytes(f *testing.F) {
	dev := blockdev.NewSim(blockdev.SimOptions{})
	w, err := Create(dev, 5, Options{MaxWrite: 16 << 10})
	if err != nil {
		f.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		if _, err := w.Append(batch(5+uint64(i)*2, 2)...); err != nil {
			f.Fatal(err)
		}
	}
	w.Close()
	img := dev.Bytes()
	hdr, _ := DecodeFileHeader(img)
	f.Add(img[DataStart:], uint32(16<<10), hdr.SegmentID)
	f.Add(img[DataStart:DataStart+600], uint32(64), hdr.SegmentID)
	f.Fuzz(func(t *testing.T, frames []byte, mw uint32, seg uint64) {
		if len(frames) > 1<<16 {
			return
		}
		img := make([]byte, DataStart+len(frames))
		EncodeFileHeader(img, FileHeader{SegmentID: seg, BaseOffset: 5, MaxWrite: max(mw%(1<<17), 32)})
		copy(img[DataStart:], frames)
		s, err := NewScanner(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
		if err != nil {
			return
		}
		for s.Next() {
			fr := s.Frame()
			h, err := DecodeFrameHeader(img[fr.Pos:], int(^uint32(0)>>1))
			if err != nil || VerifyFrame(h, seg, fr.Pos, fr.Payload) != nil {
				t.Fatalf("frame at %d returned without verifying", fr.Pos)
			}
		}
		_ = s.Err()
	})
}
