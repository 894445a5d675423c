package cache

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReclaimLeavesASteadyMixAlone: values whose sizes keep one mix of
// classes reuse each other's free blocks, so the cache never evicts a
// value for the slab it sits in, and the hits are what the budget gives.
func TestReclaimLeavesASteadyMixAlone(t *testing.T) {
	for _, budget := range []int64{1 << 20, 8 << 20} {
		t.Run(fmt.Sprintf("budget=%d", budget), func(t *testing.T) {
			c, err := New(budget)
			require.NoError(t, err)
			defer c.Close()
			ns := c.NewNamespace()
			rng := rand.New(rand.NewPCG(1, 2))
			sizes := []int{900, 4000, 4600, 12000}
			for i := int64(0); i < 40*budget/4096; i++ {
				pos := rng.Int64N(2*budget/4096) * 8
				if v, ok := c.Get(ns, pos); ok {
					v.Release()
					continue
				}
				v := c.Alloc(sizes[pos/8%int64(len(sizes))])
				c.Set(ns, pos, v)
				v.Release()
				c.Wait() // evictions applied before the next Alloc, however busy the machine
			}
			c.Wait()
			st := c.Stats()
			t.Logf("%+v", st)
			assert.Zero(t, st.Reclaimed, "values evicted for their slabs in a steady mix")
			assert.LessOrEqual(t, st.Mapped, budget+2*st.MaxPooled+int64(len(sizes))*slabBytes)
		})
	}
}

// TestReclaimLeavesAManyClassMixAlone: a steady mix of sizes over 26
// classes keeps a partly used slab in each, more free bytes than twice
// MaxPooled at a small budget. Those are the slabs the classes fill
// next: a reclaim that evicted their values (often just set) evicted
// most values admitted, and had the next Allocs map the slabs again.
func TestReclaimLeavesAManyClassMixAlone(t *testing.T) {
	const budget = 1 << 20
	c, err := New(budget)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	rng := rand.New(rand.NewPCG(1, 2))
	var sizes []int
	for s := 400; s < 16000; s += 600 {
		sizes = append(sizes, s)
	}
	for i := int64(0); i < 40*budget/4096; i++ {
		pos := rng.Int64N(2*budget/4096) * 8
		if v, ok := c.Get(ns, pos); ok {
			v.Release()
			continue
		}
		v := c.Alloc(sizes[pos/8%int64(len(sizes))])
		c.Set(ns, pos, v)
		v.Release()
		c.Wait()
	}
	st := c.Stats()
	t.Logf("%+v", st)
	assert.LessOrEqual(t, st.Reclaimed, st.Added/10, "values evicted for the slabs their classes fill next")
}

// TestReclaimIsNotRepeatedForHeldBlocks: blocks its callers hold keep
// slabs of free blocks mapped, more than twice MaxPooled, which no
// reclaim can free. Allocs then do not scan every slab again each.
func TestReclaimIsNotRepeatedForHeldBlocks(t *testing.T) {
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	var rest []*Value
	for i := range 20 * 128 { // 20 slabs of 512-byte blocks, one block of each held
		v := c.Alloc(500)
		if i%128 == 0 {
			defer v.Release()
		} else {
			rest = append(rest, v)
		}
	}
	for _, v := range rest {
		v.Release()
	}
	require.Greater(t, c.Stats().Pooled, 2*c.Stats().MaxPooled)
	before := c.pools.scans.Load()
	for range 1000 {
		c.Alloc(4000).Release()
	}
	assert.LessOrEqual(t, c.pools.scans.Load()-before, int64(2), "reclaims that could free nothing")
}
