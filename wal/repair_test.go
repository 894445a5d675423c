package wal

import (
	"testing"

	"github.com/segstore/segstore/internal/testutil"
	"github.com/stretchr/testify/require"
)

// TestSingleBitFlipFindsEveryBit flips every bit of a frame, one at a time,
// and checks that the syndrome names exactly that bit.
func TestSingleBitFlipFindsEveryBit(t *testing.T) {
	recs := [][]byte{testutil.Record(3, 300), make([]byte, 700), testutil.Record(5, 1)}
	frame := make([]byte, FrameSize(PayloadSize(recs)))
	EncodeFrame(frame, 99, 4096, 4000, 3, 1234, recs)
	plen := PayloadSize(recs)
	end := FrameHeaderLen + plen
	for i := 0; i < end; i++ {
		for b := uint(0); b < 8; b++ {
			f := append([]byte(nil), frame...)
			f[i] ^= 1 << b
			want := uint32(f[0]) | uint32(f[1])<<8 | uint32(f[2])<<16 | uint32(f[3])<<24
			at, bit, ok := singleBitFlip(99, 4096, f[4:FrameHeaderLen], f[FrameHeaderLen:end], want)
			require.True(t, ok, "byte %d bit %d", i, b)
			require.Equal(t, i, at, "byte %d bit %d", i, b)
			require.Equal(t, b, bit, "byte %d bit %d", i, b)
		}
	}
	// Two flips are not one.
	f := append([]byte(nil), frame...)
	f[40] ^= 1
	f[900] ^= 4
	want := uint32(f[0]) | uint32(f[1])<<8 | uint32(f[2])<<16 | uint32(f[3])<<24
	_, _, ok := singleBitFlip(99, 4096, f[4:FrameHeaderLen], f[FrameHeaderLen:end], want)
	require.False(t, ok)
}
