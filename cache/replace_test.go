package cache

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// heldBytes is what the values c holds for keys [0, n) of ns occupy, as
// their cost counts it.
func heldBytes(c *Cache, ns Namespace, n int) int64 {
	var held int64
	for i := range n {
		if v, ok := c.Get(ns, int64(i)*8); ok {
			held += v.cost() + entryCost
			v.Release()
		}
	}
	return held
}

// TestRefusedShorterValueKeepsItsCost: a shorter value set for a key that
// holds a longer one is refused (the longer stays), and the budget still
// counts the longer one: what the cache holds stays within its budget
// when new keys come after. Ristretto records the cost of a refused
// update for the key: the budget then counts the short value while the
// long one is held.
func TestRefusedShorterValueKeepsItsCost(t *testing.T) {
	const budget = 1 << 20
	c, err := New(budget)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	const long, short, n = 30 << 10, 100, 200
	for i := range n {
		v := c.Alloc(long)
		c.Set(ns, int64(i)*8, v)
		v.Release()
		c.Wait()
	}
	for i := range n { // refused: the longer values stay
		v := c.Alloc(short)
		c.Set(ns, int64(i)*8, v)
		v.Release()
		c.Wait()
	}
	held := heldBytes(c, ns, n)
	st := c.Stats()
	t.Logf("held %d KiB, counted %d KiB, budget %d KiB", held>>10, st.Bytes>>10, budget>>10)
	assert.LessOrEqual(t, held, int64(budget), "held past the budget: %+v", st)
	assert.GreaterOrEqual(t, st.Bytes, held, "the budget counts less than is held: %+v", st)
}

// TestLongerValuesReplacingStayWithinBudget: values replaced by longer
// ones for their keys (a run read further) keep the cache within its
// budget (ristretto applies an update's cost without evicting: Set deletes
// a shorter value first).
func TestLongerValuesReplacingStayWithinBudget(t *testing.T) {
	const budget = 1 << 20
	c, err := New(budget)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	const short, long, n = 4 << 10, 60 << 10, 200
	for i := range n {
		v := c.Alloc(short)
		c.Set(ns, int64(i)*8, v)
		v.Release()
		c.Wait()
	}
	for i := range n {
		v := c.Alloc(long)
		c.Set(ns, int64(i)*8, v)
		v.Release()
		c.Wait()
	}
	held := heldBytes(c, ns, n)
	st := c.Stats()
	t.Logf("held %d KiB, counted %d KiB, budget %d KiB", held>>10, st.Bytes>>10, budget>>10)
	assert.LessOrEqual(t, st.Bytes, int64(budget), "%+v", st)
	assert.LessOrEqual(t, held, int64(budget), "%+v", st)
}

// TestTinyBudget: a cache of the smallest budget holds any value whose
// cost (block, descriptor and entryCost) fits it, refuses larger ones
// without holding them or anything in flight, and takes values after
// them: nothing stays pending.
func TestTinyBudget(t *testing.T) {
	const budget = 64 << 10
	c, err := New(budget)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	for i, n := range []int{0, 1, 4096, 60 << 10, 60<<10 + 1, 64 << 10, 1 << 20, 200 << 20, 7} {
		v := c.Alloc(n)
		cost := v.cost() + entryCost
		fits := cost <= budget
		c.Set(ns, int64(i)*8, v)
		v.Release()
		c.Wait()
		got, ok := c.Get(ns, int64(i)*8)
		require.Equal(t, fits, ok, "a value of %d bytes (cost %d) in a %d-byte cache", n, cost, budget)
		if ok {
			assert.Equal(t, n, len(got.Bytes()))
			got.Release()
		}
		assert.Zero(t, c.pending.Load(), "bytes left pending after a value of %d", n)
		assert.LessOrEqual(t, c.Stats().Bytes, int64(budget))
	}
}

// TestConcurrentSetsOfOneKeyCountWhatIsHeld: goroutines setting values of
// many lengths for the same keys (some replace, most are refused): once
// every Set is applied, the budget counts exactly what is held and
// nothing is pending.
func TestConcurrentSetsOfOneKeyCountWhatIsHeld(t *testing.T) {
	c, err := New(4 << 20)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	const keys = 64
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				n := 1 + (i*7919+g*104729)%(8<<10)
				v := c.Alloc(n)
				c.Set(ns, int64(i%keys)*8, v)
				v.Release()
			}
		}()
	}
	wg.Wait()
	c.Wait()
	st := c.Stats()
	require.LessOrEqual(t, st.Bytes, int64(4<<20), "%+v", st)
	assert.Zero(t, c.pending.Load())
	assert.Equal(t, heldBytes(c, ns, keys), st.Bytes, "%+v", st)
}
