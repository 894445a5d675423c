package engine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/cache"
)

// TestFreshHoldsTheNewestBatches: batches of 1 to 300 records of 0 to
// 699 bytes, added in offset order and, now and then, two in swapped order (as
// appenders that reach the lock out of order do), into bounds from 4 KiB
// to 1 MiB. After every add the held batches are sorted, within the bound
// and the newest ones; every offset held reads its own bytes (the newest
// batch's after every add, all of them after every 199th), lo and hi
// enclose what is held; and an offset dropped reads nothing. release
// empties it.
func TestFreshHoldsTheNewestBatches(t *testing.T) {
	for _, bound := range []int{4 << 10, 64 << 10, 1 << 20} {
		t.Run(fmt.Sprint(bound), func(t *testing.T) {
			c, err := cache.New(64 << 20)
			require.NoError(t, err)
			defer c.Close()
			f := &fresh{maxBytes: bound}
			rng := rand.New(rand.NewPCG(uint64(bound), 1))
			const ns = cache.Namespace(7)
			rec := func(off uint64) []byte { return freshRecord(off, int(off*7919%700), 0) }
			batch := func(first uint64, n int) [][]byte {
				recs := make([][]byte, n)
				for k := range recs {
					recs[k] = rec(first + uint64(k))
				}
				return recs
			}
			next := uint64(0)
			for i := range 1000 {
				n := 1 + rng.IntN(300)
				if rng.IntN(2) == 0 { // most batches small, so the bound holds many
					n = 1 + rng.IntN(3)
				}
				if rng.IntN(10) == 0 { // two batches, the later one added first
					m := 1 + rng.IntN(20)
					f.add(c, ns, next+uint64(n), batch(next+uint64(n), m))
					f.add(c, ns, next, batch(next, n))
					next += uint64(n + m)
				} else {
					f.add(c, ns, next, batch(next, n))
					next += uint64(n)
				}
				requireFreshConsistent(t, f, ns, next, rec, i%199 == 0)
			}
			f.release()
			assert.Empty(t, f.batches)
			_, ok := f.get(ns, next-1, nil)
			assert.False(t, ok)
		})
	}
}

// requireFreshConsistent checks f after an add: end is one past the
// highest offset added; all: read every record held too.
func requireFreshConsistent(t *testing.T, f *fresh, ns cache.Namespace, end uint64, rec func(uint64) []byte, all bool) {
	t.Helper()
	held, size := 0, 0
	for i, b := range f.batches {
		if i > 0 {
			require.Less(t, f.batches[i-1].first, b.first, "sorted by offset")
		}
		held += b.count
		size += b.size
	}
	require.Equal(t, size, f.bytes)
	require.LessOrEqual(t, f.bytes, f.maxBytes)
	if len(f.batches) == 0 {
		return
	}
	lo := f.batches[0].first
	last := f.batches[len(f.batches)-1]
	require.Equal(t, lo, f.lo.Load())
	require.GreaterOrEqual(t, f.hi.Load(), last.first+uint64(last.count))
	for _, b := range f.batches {
		if !all && b != last {
			continue
		}
		for k := range b.count {
			off := b.first + uint64(k)
			if got, ok := f.get(ns, off, nil); !ok || !bytes.Equal(got, rec(off)) {
				require.Failf(t, "a held record reads wrong", "offset %d: held %v, %d bytes, want %d", off, ok, len(got), len(rec(off)))
			}
		}
	}
	if lo > 0 {
		_, ok := f.get(ns, lo-1, nil)
		require.False(t, ok, "offset %d was dropped", lo-1)
	}
	_, ok := f.get(ns+1, lo, nil)
	require.False(t, ok, "another namespace's offset")
	_, ok = f.get(ns, end, nil)
	require.False(t, ok, "not added yet")
}

// A batch whose records fit the bound but whose block, rounded up to the
// pool's class, does not is not kept, and the batches held stay: keeping
// it would have dropped them all, and then itself. Swept over batch sizes
// across the classes, each against a bound one byte below its block (not
// kept) and at its block (kept).
func TestFreshKeepsWhatItHoldsPastABatchWhoseBlockIsTooLarge(t *testing.T) {
	c, err := cache.New(64 << 20)
	require.NoError(t, err)
	defer c.Close()
	const ns = cache.Namespace(3)
	small := [][]byte{freshRecord(0, 100, 0)}
	for n := 1 << 10; n <= 2<<20; n = n*9/8 + 1 {
		probe := c.Alloc(n)
		block := int(probe.Size())
		probe.Release()
		large := [][]byte{make([]byte, n-4)} // n bytes with its end table
		for _, tc := range []struct {
			bound int
			kept  bool
		}{{block - 1, false}, {block, true}} {
			f := &fresh{maxBytes: tc.bound}
			f.add(c, ns, 0, small)
			f.add(c, ns, 1, large)
			_, ok := f.get(ns, 1, nil)
			require.Equal(t, tc.kept, ok, "a batch of %d bytes in a block of %d, bound %d", n, block, tc.bound)
			if !tc.kept {
				got, ok := f.get(ns, 0, nil)
				require.True(t, ok, "the small batch is still held (batch of %d bytes, bound %d)", n, tc.bound)
				require.Equal(t, small[0], got)
			}
			require.LessOrEqual(t, f.bytes, f.maxBytes)
			f.release()
		}
	}
}
