// Package devicetest is the conformance suite every blockdev.Device
// implementation must pass. Call Run from a test with a constructor that
// returns a fresh, empty, writable device.
package devicetest

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// Run runs the conformance suite against devices made by open.
func Run(t *testing.T, open func(t *testing.T) blockdev.Device) {
	tests := []struct {
		name string
		fn   func(t *testing.T, d blockdev.Device)
	}{
		{"AlignmentIsPlausible", alignmentIsPlausible},
		{"WriteReadRoundTrip", writeReadRoundTrip},
		{"ReadPastEndIsShortWithEOF", readPastEnd},
		{"MisalignedCallsAreNamedErrors", misaligned},
		{"WriteExtendsWithZeroGap", writeExtends},
		{"AllocateAndTruncate", allocateAndTruncate},
		{"SyncSucceeds", syncSucceeds},
		{"ClosedDeviceRefusesIO", closed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := open(t)
			tc.fn(t, d)
		})
	}
}

func block(d blockdev.Device, n int, fill byte) []byte {
	b := d.Alignment().Alloc(n)
	for i := range b {
		b[i] = fill + byte(i%251)
	}
	return b
}

func alignmentIsPlausible(t *testing.T, d blockdev.Device) {
	a := d.Alignment()
	for _, v := range []int{a.Memory, a.Offset, a.Block} {
		assert.True(t, v > 0 && v&(v-1) == 0, "alignment %v must be powers of two", a)
	}
	assert.GreaterOrEqual(t, a.Block, a.Offset)
	assert.NotEmpty(t, a.Source)
	assert.NotEmpty(t, d.Name())
}

func writeReadRoundTrip(t *testing.T, d blockdev.Device) {
	bs := d.Alignment().Block
	w := block(d, 4*bs, 7)
	n, err := d.WriteAt(w, int64(bs))
	require.NoError(t, err)
	require.Equal(t, len(w), n)

	r := d.Alignment().Alloc(4 * bs)
	n, err = d.ReadAt(r, int64(bs))
	require.NoError(t, err)
	require.Equal(t, len(r), n)
	assert.True(t, bytes.Equal(w, r), "read back differs from written")

	size, err := d.Size()
	require.NoError(t, err)
	assert.Equal(t, int64(5*bs), size)

	// Overwrite in the middle at the minimum granularity.
	off := d.Alignment().Offset
	small := block(d, off, 99)
	_, err = d.WriteAt(small, int64(2*bs))
	require.NoError(t, err)
	_, err = d.ReadAt(r, int64(bs))
	require.NoError(t, err)
	assert.Equal(t, small, r[bs:bs+off])
	assert.Equal(t, w[bs+off:], r[bs+off:])
}

func readPastEnd(t *testing.T, d blockdev.Device) {
	bs := d.Alignment().Block
	_, err := d.WriteAt(block(d, bs, 1), 0)
	require.NoError(t, err)
	r := d.Alignment().Alloc(2 * bs)
	n, err := d.ReadAt(r, 0)
	assert.Equal(t, bs, n)
	assert.ErrorIs(t, err, io.EOF)
	n, err = d.ReadAt(r, int64(4*bs))
	assert.Equal(t, 0, n)
	assert.ErrorIs(t, err, io.EOF)
}

func misaligned(t *testing.T, d blockdev.Device) {
	a := d.Alignment()
	good := a.Alloc(2 * a.Offset)
	cases := []struct {
		name string
		buf  []byte
		off  int64
	}{
		{"address", good[1 : 1+a.Offset], 0},
		{"offset", good[:a.Offset], 1},
		{"length", good[:a.Offset-1], 0},
	}
	if a.Memory == 1 {
		cases = cases[1:]
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := d.WriteAt(tc.buf, tc.off)
			var ae *blockdev.AlignmentError
			require.ErrorAs(t, err, &ae)
			assert.ErrorIs(t, err, blockdev.ErrMisaligned)
			assert.Contains(t, err.Error(), tc.name, "the message must say what is misaligned")
			assert.Equal(t, "write", ae.Op)
			_, err = d.ReadAt(tc.buf, tc.off)
			assert.ErrorIs(t, err, blockdev.ErrMisaligned)
		})
	}
	size, err := d.Size()
	require.NoError(t, err)
	assert.Zero(t, size, "a refused write must not touch the device")
}

func writeExtends(t *testing.T, d blockdev.Device) {
	bs := d.Alignment().Block
	_, err := d.WriteAt(block(d, bs, 3), int64(3*bs))
	require.NoError(t, err)
	r := d.Alignment().Alloc(3 * bs)
	_, err = d.ReadAt(r, 0)
	require.NoError(t, err)
	assert.Equal(t, make([]byte, 3*bs), r, "the gap before a write past the end reads as zeros")
}

func allocateAndTruncate(t *testing.T, d blockdev.Device) {
	bs := int64(d.Alignment().Block)
	require.NoError(t, d.Allocate(0, 8*bs))
	size, err := d.Size()
	require.NoError(t, err)
	assert.Equal(t, 8*bs, size)
	r := d.Alignment().Alloc(int(8 * bs))
	_, err = d.ReadAt(r, 0)
	require.NoError(t, err)
	assert.Equal(t, make([]byte, 8*bs), r)

	// Allocating inside the current size never shrinks it.
	require.NoError(t, d.Allocate(0, bs))
	size, err = d.Size()
	require.NoError(t, err)
	assert.Equal(t, 8*bs, size)

	_, err = d.WriteAt(block(d, int(bs), 5), 0)
	require.NoError(t, err)
	require.NoError(t, d.Truncate(bs/2))
	size, err = d.Size()
	require.NoError(t, err)
	assert.Equal(t, bs/2, size)
	require.NoError(t, d.Truncate(bs))
	_, err = d.ReadAt(r[:bs], 0)
	require.NoError(t, err)
	assert.Equal(t, make([]byte, bs/2), r[bs/2:bs], "bytes cut by Truncate come back as zeros")
}

func syncSucceeds(t *testing.T, d blockdev.Device) {
	_, err := d.WriteAt(block(d, d.Alignment().Block, 9), 0)
	require.NoError(t, err)
	require.NoError(t, d.Sync())
	require.NoError(t, d.Sync(), "a second sync with nothing pending must succeed")
}

func closed(t *testing.T, d blockdev.Device) {
	require.NoError(t, d.Close())
	b := d.Alignment().Alloc(d.Alignment().Block)
	_, err := d.WriteAt(b, 0)
	assert.ErrorIs(t, err, os.ErrClosed)
	_, err = d.ReadAt(b, 0)
	assert.ErrorIs(t, err, os.ErrClosed)
	assert.ErrorIs(t, d.Sync(), os.ErrClosed)
}
