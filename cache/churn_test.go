package cache

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestChurnAcrossClasses: a workload whose value size moves through the
// classes (up and down, one class at a time, each phase offering twice
// the budget) keeps the memory mapped within the budget, the free blocks
// the cache may keep, and a partly used slab per class: evicted values of
// the classes the workload left empty their slabs, which are unmapped.
// Checked for tiny budgets too, where a value's bookkeeping is most of it.
func TestChurnAcrossClasses(t *testing.T) {
	var small []int // classes below a slab: several blocks per slab
	for _, c := range classes {
		if c <= slabBytes/2 {
			small = append(small, c)
		}
	}
	order := append([]int(nil), small...)
	for i := len(small) - 1; i >= 0; i-- {
		order = append(order, small[i])
	}
	for _, budget := range []int64{64 << 10, 1 << 20, 8 << 20} {
		t.Run(fmt.Sprintf("budget=%d", budget), func(t *testing.T) {
			c, err := New(budget)
			require.NoError(t, err)
			defer c.Close()
			ns := c.NewNamespace()
			pos := int64(0)
			var peak int64
			var at Stats
			for _, size := range order {
				for offered := int64(0); offered < 2*budget; offered += int64(size) {
					v := c.Alloc(size - 100) // the class's size: its values take it
					v.Bytes()[0] = 1
					c.Set(ns, pos, v)
					v.Release()
					pos += 8
					if pos%(64*8) == 0 {
						c.Wait()
						if st := c.Stats(); st.Mapped > peak {
							peak, at = st.Mapped, st
						}
					}
				}
				c.Wait()
			}
			slack := int64(len(small)) * slabBytes // a partly used slab per class
			t.Logf("budget %d KiB: peak mapped %d KiB (bound %d KiB) at %+v", budget>>10, peak>>10, (budget+at.MaxPooled+slack)>>10, at)
			assert.LessOrEqual(t, peak, budget+at.MaxPooled+slack, "mapped past the budget, the free pool and a slab per class: %+v", at)
		})
	}
}
