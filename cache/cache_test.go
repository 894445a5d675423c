package cache

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func newCache(t *testing.T, budget int64) *Cache {
	t.Helper()
	c, err := New(budget)
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

// value returns a value holding b, with the caller's reference.
func value(t *testing.T, c *Cache, b []byte) *Value {
	t.Helper()
	v, err := c.NewValue(len(b))
	require.NoError(t, err)
	copy(v.Bytes(), b)
	return v
}

// get returns a copy of the value at (ns, pos), releasing the reference.
func get(c *Cache, ns Namespace, pos int64) ([]byte, bool) {
	v, ok := c.Get(ns, pos)
	if !ok {
		return nil, false
	}
	defer v.Release()
	return append([]byte(nil), v.Bytes()...), true
}

func TestGetSetAndNamespaces(t *testing.T) {
	c := newCache(t, 1<<20)
	a, b := c.NewNamespace(), c.NewNamespace()
	require.NotEqual(t, a, b)
	require.NotZero(t, a)

	v := value(t, c, []byte("frame-a"))
	c.Set(a, 4096, v)
	v.Release()
	c.Wait()
	got, ok := get(c, a, 4096)
	require.True(t, ok)
	assert.Equal(t, []byte("frame-a"), got)
	_, ok = get(c, b, 4096)
	assert.False(t, ok, "another file's namespace must never see a's entries")
	_, ok = get(c, a, 4104)
	assert.False(t, ok)

	// The first value for a key stays: it is the same verified bytes. The
	// refused one is unmapped.
	other := value(t, c, []byte("other"))
	c.Set(a, 4096, other)
	other.Release()
	c.Wait()
	got, _ = get(c, a, 4096)
	assert.Equal(t, []byte("frame-a"), got)

	st := c.Stats()
	assert.Equal(t, int64(2), st.Hits)
	assert.Equal(t, int64(2), st.Misses)
	assert.InDelta(t, 0.5, st.HitRatio(), 1e-9)
	assert.Equal(t, int64(1), st.Added)
	// Bytes counts the value's mapping (a page) and ristretto's bookkeeping.
	assert.GreaterOrEqual(t, st.Bytes, int64(4096))
	assert.Less(t, st.Bytes, int64(4096+256))
	assert.Equal(t, int64(4096), st.Mapped, "only the cached value stays mapped")
}

func TestBudgetIsRespected(t *testing.T) {
	const budget = 1 << 20
	c := newCache(t, budget)
	ns := c.NewNamespace()
	for i := int64(0); i < 1000; i++ {
		v := value(t, c, make([]byte, 4000))
		c.Set(ns, i*4096, v)
		v.Release()
		if i%64 == 0 {
			c.Wait()
		}
	}
	c.Wait()
	st := c.Stats()
	assert.LessOrEqual(t, st.Bytes, int64(budget), "stats %+v", st)
	assert.LessOrEqual(t, st.Mapped, int64(budget), "evicted and refused values are unmapped: %+v", st)
	assert.Positive(t, st.Evicted+st.Refused, "4 MB offered to a 1 MiB cache")
}

// TestHeldValueOutlivesEviction: a reader's reference keeps a value's
// bytes mapped and unchanged after the cache lets go of it (eviction,
// Close); the last release unmaps it.
func TestHeldValueOutlivesEviction(t *testing.T) {
	c, err := New(256 << 10)
	require.NoError(t, err)
	ns := c.NewNamespace()
	v := value(t, c, []byte("held"))
	c.Set(ns, 0, v)
	v.Release()
	c.Wait()
	held, ok := c.Get(ns, 0)
	require.True(t, ok)
	for i := int64(1); i < 200; i++ { // 800 KiB through a 256 KiB cache
		w := value(t, c, make([]byte, 4000))
		c.Set(ns, i*4096, w)
		w.Release()
		c.Wait()
	}
	c.Close()
	assert.Equal(t, []byte("held"), held.Bytes())
	assert.Equal(t, int64(4096), c.Stats().Mapped, "only the held value is still mapped")
	held.Release()
	assert.Zero(t, c.Stats().Mapped)

	_, ok = c.Get(ns, 0)
	assert.False(t, ok, "a closed cache misses")
	w := value(t, c, []byte("late"))
	c.Set(ns, 8, w) // ignored
	w.Release()
	assert.Zero(t, c.Stats().Mapped)
}

func TestBadInput(t *testing.T) {
	_, err := New(1024)
	assert.ErrorIs(t, err, ErrTooSmall)
	c := newCache(t, 1<<20)
	v := value(t, c, []byte("x"))
	defer v.Release()
	assert.Panics(t, func() { c.Set(1, 3, v) }, "positions are 8-byte aligned by the format")
	assert.Panics(t, func() { c.Set(1, MaxPos+8, v) })
}
