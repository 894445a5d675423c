package engine

import (
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/engine/internal/layout"
)

// FuzzIndexBlockFind: an index block's find (an interpolated first guess,
// then a binary search) returns what a linear search returns, for any
// spacing of the entries' offsets (gaps of 0 included, gaps up to the
// 32-bit field's limit), any count from 1 to a full block, any base
// (near 2^63 and the uint64 maximum too) and any offset sought, before the
// first entry, between, on and beyond the last.
//
// gaps holds the entries' steps, 4 bytes each (the first is the first
// entry's offset from base); a step that would pass the field's maximum
// is cut to it.
func FuzzIndexBlockFind(f *testing.F) {
	steps := func(n int, step uint32) []byte {
		b := make([]byte, 0, 4*n)
		for range n {
			b = binary.LittleEndian.AppendUint32(b, step)
		}
		return b
	}
	f.Add(uint64(0), uint64(0), []byte{7, 0, 0, 0})
	f.Add(uint64(1000), uint64(2000), steps(entriesPerBlock, 4))
	f.Add(uint64(1<<63), uint64(1<<63+50), steps(40, 13))
	f.Add(uint64(math.MaxUint64-1<<20), uint64(math.MaxUint64), steps(entriesPerBlock, 1<<12))
	f.Add(uint64(5), uint64(5+math.MaxUint32), steps(3, math.MaxUint32/2))
	f.Add(uint64(5), uint64(4), steps(10, 0))
	f.Add(uint64(5), uint64(17), append(steps(100, 1), steps(2, 1<<30)...))
	f.Fuzz(func(t *testing.T, base, off uint64, gaps []byte) {
		n := min(len(gaps)/4, entriesPerBlock)
		if n == 0 {
			return
		}
		const next = 1 << 40
		b := make(indexBlock, indexBlockLen)
		binary.LittleEndian.PutUint32(b[4:], uint32(n))
		binary.LittleEndian.PutUint64(b[16:], next)
		offs := make([]uint64, n)
		var o uint64
		for i := range offs {
			o = min(o+uint64(binary.LittleEndian.Uint32(gaps[4*i:])), math.MaxUint32)
			offs[i] = o
			layout.EncodeEntry(b[indexBlockHead+i*indexEntryLen:], base, layout.IndexEntry{Pos: int64(100 * (i + 1)), Off: base + o})
		}
		rel := off - base
		j := 0
		for i, o := range offs {
			if o <= rel {
				j = i
			}
		}
		end := int64(next)
		if j+1 < n {
			end = int64(100 * (j + 2))
		}
		e, gotEnd := b.find(base, off)
		require.Equal(t, base+offs[j], e.off, "entry for offset %d (base %d, offsets %v)", off, base, offs)
		require.Equal(t, int64(100*(j+1)), e.pos, "entry for offset %d (base %d, offsets %v)", off, base, offs)
		require.Equal(t, end, gotEnd, "end for offset %d (base %d, offsets %v)", off, base, offs)
	})
}
