package blockdev_test

import (
	"bytes"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

func fill(d blockdev.Device, n int, b byte) []byte {
	buf := d.Alignment().Alloc(n)
	for i := range buf {
		buf[i] = b
	}
	return buf
}

func TestSimCrashModes(t *testing.T) {
	setup := func(seed uint64) *blockdev.Sim {
		s := blockdev.NewSim(blockdev.SimOptions{Seed: seed})
		_, err := s.WriteAt(fill(s, 4096, 'a'), 0)
		require.NoError(t, err)
		require.NoError(t, s.Sync())
		_, err = s.WriteAt(fill(s, 8192, 'b'), 4096)
		require.NoError(t, err)
		return s
	}
	synced := bytes.Repeat([]byte{'a'}, 4096)

	img := setup(1).Crash(blockdev.CrashDropUnsynced)
	assert.Equal(t, synced, img)

	img = setup(1).Crash(blockdev.CrashKeepAll)
	assert.Equal(t, append(synced, bytes.Repeat([]byte{'b'}, 8192)...), img)

	s := setup(7)
	img = s.Crash(blockdev.CrashTear)
	require.Len(t, img, 4096+8192, "the size change survives; torn sectors read as zeros")
	assert.Equal(t, synced, img[:4096])
	kept, lost := 0, 0
	for off := 4096; off < len(img); off += blockdev.SectorSize {
		sec := img[off : off+blockdev.SectorSize]
		switch {
		case bytes.Equal(sec, bytes.Repeat([]byte{'b'}, blockdev.SectorSize)):
			kept++
		case bytes.Equal(sec, make([]byte, blockdev.SectorSize)):
			lost++
		default:
			t.Fatalf("sector at %d is neither old nor new: tearing must respect sector atomicity", off)
		}
	}
	assert.Equal(t, 16, kept+lost)
	assert.Equal(t, lost, s.Injected().TornSectors)
	assert.Positive(t, kept)
	assert.Positive(t, lost)

	// Same seed, same tear.
	assert.Equal(t, img, setup(7).Crash(blockdev.CrashTear))

	// A crashed device refuses everything.
	_, err := s.WriteAt(fill(s, 512, 'c'), 0)
	assert.ErrorIs(t, err, blockdev.ErrCrashed)
	assert.ErrorIs(t, s.Sync(), blockdev.ErrCrashed)
}

func TestSimFailNth(t *testing.T) {
	s := blockdev.NewSim(blockdev.SimOptions{})
	s.FailNth(blockdev.OpWrite, 2)
	s.FailNth(blockdev.OpSync, 1)
	s.FailNth(blockdev.OpRead, 1)
	b := fill(s, 512, 'x')

	_, err := s.WriteAt(b, 0)
	require.NoError(t, err)
	_, err = s.WriteAt(b, 512)
	assert.ErrorIs(t, err, syscall.EIO)
	assert.ErrorIs(t, err, blockdev.ErrInjected)
	assert.Contains(t, err.Error(), "call #2")
	size, _ := s.Size()
	assert.Equal(t, int64(512), size, "a failed write writes nothing")

	assert.ErrorIs(t, s.Sync(), syscall.EIO)
	assert.Empty(t, s.Crash(blockdev.CrashDropUnsynced), "a failed sync makes nothing durable")

	s2 := blockdev.NewSim(blockdev.SimOptions{})
	s2.FailNth(blockdev.OpRead, 1)
	_, err = s2.ReadAt(b, 0)
	assert.ErrorIs(t, err, syscall.EIO)
	_, err = s2.ReadAt(b, 0)
	assert.NotErrorIs(t, err, syscall.EIO, "only the nth call fails")

	assert.Equal(t, blockdev.Injected{WriteErrors: 1, SyncErrors: 1, DroppedWrites: 1, Crashes: 1}, s.Injected())
	assert.Equal(t, 1, s2.Injected().ReadErrors)
}

func TestSimMisdirectAndFlip(t *testing.T) {
	s := blockdev.NewSim(blockdev.SimOptions{})
	s.MisdirectNth(2, 1024)
	_, err := s.WriteAt(fill(s, 2048, 0), 0)
	require.NoError(t, err)
	_, err = s.WriteAt(fill(s, 512, 'm'), 0)
	require.NoError(t, err)
	img := s.Bytes()
	assert.Equal(t, make([]byte, 512), img[:512], "the aimed-at block keeps its old content")
	assert.Equal(t, bytes.Repeat([]byte{'m'}, 512), img[1024:1536], "the data landed elsewhere")

	require.NoError(t, s.Sync())
	s.FlipBit(1024, 0)
	assert.Equal(t, byte('m')^1, s.Bytes()[1024])
	assert.Equal(t, byte('m')^1, s.Crash(blockdev.CrashDropUnsynced)[1024], "a flip hits the durable media too")
	assert.Equal(t, 1, s.Injected().Misdirected)
	assert.Equal(t, 1, s.Injected().BitFlips)
}
