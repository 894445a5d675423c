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
