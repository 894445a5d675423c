package wal

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	sc, err = scan(sim, end+8)
	require.NoError(t, err)
	require.NotNil(t, sc.Torn(), "elsewhere the proof runs and finds them (within MaxWrite: a torn tail)")
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
