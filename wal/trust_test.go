package wal

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
)

// TestTrustCleanEnd: the scanner skips the proof that the rest of the
// file is zero only when the frames end exactly at the trusted position,
// at a zeroed header; anywhere else the proof runs and finds stray data.
func TestTrustCleanEnd(t *testing.T) {
	build := func(t *testing.T) (*blockdev.Sim, int64) {
		sim := newSim(1)
		w, err := Create(sim, 0, Options{Preallocate: 1 << 20, PreZero: true})
		require.NoError(t, err)
		_, err = w.Append(batch(0, 5)...)
		require.NoError(t, err)
		end, _ := w.Durable()
		require.NoError(t, w.Close())
		return sim, end
	}
	// stray writes 0xee over [from, from+n) of the sector-aligned blocks
	// holding it, keeping the other bytes.
	stray := func(t *testing.T, sim *blockdev.Sim, from int64, n int) {
		start := from &^ (blockdev.SectorSize - 1)
		buf := sim.Alignment().Alloc(int((from + int64(n) - start + blockdev.SectorSize - 1) &^ (blockdev.SectorSize - 1)))
		_, err := sim.ReadAt(buf, start)
		require.NoError(t, err)
		for i := from - start; i < from-start+int64(n); i++ {
			buf[i] = 0xee
		}
		_, err = sim.WriteAt(buf, start)
		require.NoError(t, err)
	}
	scan := func(sim *blockdev.Sim, trust int64) (*Scanner, error) {
		sc, err := NewScanner(sim)
		if err != nil {
			return nil, err
		}
		sc.TrustCleanEnd(trust)
		for sc.Next() {
		}
		return sc, sc.Err()
	}

	sim, end := build(t)
	stray(t, sim, end+512<<10, 100) // far past the end
	sc, err := scan(sim, end)
	require.NoError(t, err, "trusted: the stray bytes are not read")
	assert.Nil(t, sc.Torn())
	_, err = scan(sim, end+8)
	require.ErrorIs(t, err, ErrCorrupt, "frames that end short of where a clean close left them: records are gone")
	sc, err = scan(sim, 0)
	require.NoError(t, err)
	require.NotNil(t, sc.Torn(), "untrusted, the proof runs and finds them (within MaxWrite: a torn tail)")
	assert.Equal(t, end, sc.Torn().Pos)

	sim, end = build(t)
	stray(t, sim, end, 100) // a non-zero header at the trusted position: no trust
	sc, err = scan(sim, end)
	if err == nil {
		assert.NotNil(t, sc.Torn(), "found by the proof")
	} else {
		assert.ErrorIs(t, err, ErrCorrupt)
	}
}

// TestContinue: a scanner continued from where an earlier scan of a live
// file stopped reads only the frames appended since, and stops without a
// verdict where the writer has not finished, instead of calling it torn or
// corrupt and reading the rest of the file.
func TestContinue(t *testing.T) {
	sim := newSim(1)
	w, err := Create(sim, 100, Options{Preallocate: 1 << 20, PreZero: true})
	require.NoError(t, err)
	defer w.Close()
	scan := func(pos int64, next uint64) (frames []Frame, sc *Scanner) {
		sc, err := Continue(sim, w.Header(), pos, next)
		require.NoError(t, err)
		for sc.Next() {
			frames = append(frames, sc.Frame())
		}
		require.NoError(t, sc.Err())
		assert.Nil(t, sc.Torn())
		return frames, sc
	}

	frames, sc := scan(DataStart, 100)
	assert.Empty(t, frames, "nothing appended yet")
	assert.Equal(t, int64(DataStart), sc.End())

	_, err = w.Append(batch(0, 3)...)
	require.NoError(t, err)
	_, err = w.Append(batch(3, 2)...)
	require.NoError(t, err)
	frames, sc = scan(DataStart, 100)
	require.Len(t, frames, 2)
	end, next := sc.End(), sc.NextOffset()
	assert.Equal(t, uint64(105), next)

	_, err = w.Append(batch(5, 4)...)
	require.NoError(t, err)
	frames, sc = scan(end, next)
	require.Len(t, frames, 1, "only the frame appended since")
	assert.Equal(t, uint64(105), frames[0].First)
	end, next = sc.End(), sc.NextOffset()

	// A frame being written: its header is there, its payload not yet.
	half := sim.Alignment().Alloc(blockdev.SectorSize)
	_, err = sim.ReadAt(half, end&^(blockdev.SectorSize-1))
	require.NoError(t, err)
	copy(half[end%blockdev.SectorSize:], []byte{1, 0, 0, 0, 0x40, 0, 0, 0})
	_, err = sim.WriteAt(half, end&^(blockdev.SectorSize-1))
	require.NoError(t, err)
	frames, sc = scan(end, next)
	assert.Empty(t, frames)
	assert.Equal(t, end, sc.End(), "stopped before the unfinished frame, no verdict")
}

// TestContinueSettled: a continued scan settled (the file's writer gone)
// judges where no valid frame is as a scan from the start does, where an
// unsettled one stops without a verdict: a clean end, a torn tail (the
// last frame's later sectors never written), damage followed by a valid
// frame (corruption).
func TestContinueSettled(t *testing.T) {
	sim := newSim(2)
	w, err := Create(sim, 0, Options{Preallocate: 1 << 20, PreZero: true})
	require.NoError(t, err)
	var ends []int64
	for b := range 3 {
		_, err = w.Append(batch(uint64(b*4), 4)...)
		require.NoError(t, err)
		pos, _ := w.Durable()
		ends = append(ends, pos)
	}
	hdr := w.Header()
	require.NoError(t, w.Close())
	image := sim.Bytes()
	for _, tc := range []struct {
		name    string
		damage  func(img []byte)
		frames  int  // from the end of the first frame
		torn    bool // settled
		corrupt bool // settled
	}{
		{name: "clean", damage: func([]byte) {}, frames: 2},
		{name: "torn last frame", frames: 1, torn: true, damage: func(img []byte) {
			clear(img[alignedbuf.AlignUp(ends[1]+1, blockdev.SectorSize):ends[2]])
		}},
		{name: "flipped byte in the middle frame", corrupt: true, damage: func(img []byte) {
			img[ends[0]+FrameHeaderLen+5] ^= 1 << 3
		}},
		{name: "zeroed header of the middle frame", corrupt: true, damage: func(img []byte) {
			clear(img[ends[0] : ends[0]+FrameHeaderLen])
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := bytes.Clone(image)
			tc.damage(img)
			dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
			for _, settle := range []bool{false, true} {
				sc, err := Continue(dev, hdr, ends[0], 4)
				require.NoError(t, err)
				if settle {
					require.NoError(t, sc.Settle())
				}
				n := 0
				for sc.Next() {
					n++
				}
				if !settle {
					require.NoError(t, sc.Err(), "no verdict unsettled")
					assert.Nil(t, sc.Torn(), "no verdict unsettled")
					continue
				}
				if tc.corrupt {
					require.ErrorIs(t, sc.Err(), ErrCorrupt)
					assert.Equal(t, ends[0], sc.End())
					continue
				}
				require.NoError(t, sc.Err())
				assert.Equal(t, tc.frames, n)
				assert.Equal(t, tc.torn, sc.Torn() != nil)
			}
		})
	}
}
