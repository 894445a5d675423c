package cache

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGetSetAndNamespaces(t *testing.T) {
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	a, b := c.NewNamespace(), c.NewNamespace()
	require.NotEqual(t, a, b)
	require.NotZero(t, a)

	c.Set(a, 4096, []byte("frame-a"))
	c.Wait()
	v, ok := c.Get(a, 4096)
	require.True(t, ok)
	assert.Equal(t, []byte("frame-a"), v)
	_, ok = c.Get(b, 4096)
	assert.False(t, ok, "another file's namespace must never see a's entries")
	_, ok = c.Get(a, 4104)
	assert.False(t, ok)

	// The first value for a key stays: it is the same verified bytes.
	c.Set(a, 4096, []byte("other"))
	c.Wait()
	v, _ = c.Get(a, 4096)
	assert.Equal(t, []byte("frame-a"), v)

	st := c.Stats()
	assert.Equal(t, int64(2), st.Hits)
	assert.Equal(t, int64(2), st.Misses)
	assert.InDelta(t, 0.5, st.HitRatio(), 1e-9)
	assert.Equal(t, int64(1), st.Added)
	// Bytes counts the value and ristretto's bookkeeping for the entry.
	assert.GreaterOrEqual(t, st.Bytes, int64(len("frame-a")))
	assert.Less(t, st.Bytes, int64(len("frame-a")+256))
}

func TestBudgetIsRespected(t *testing.T) {
	const budget = 1 << 20
	c, err := New(budget)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	for i := int64(0); i < 1000; i++ {
		c.Set(ns, i*4096, make([]byte, 4096))
		if i%64 == 0 {
			c.Wait()
		}
	}
	c.Wait()
	st := c.Stats()
	assert.LessOrEqual(t, st.Bytes, int64(budget), "stats %+v", st)
	assert.Positive(t, st.Evicted+st.Refused, "4 MB offered to a 1 MiB cache")
}

func TestBadInput(t *testing.T) {
	_, err := New(1024)
	assert.ErrorIs(t, err, ErrTooSmall)
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	assert.Panics(t, func() { c.Set(1, 3, nil) }, "positions are 8-byte aligned by the format")
	assert.Panics(t, func() { c.Set(1, MaxPos+8, nil) })
}

// TestCollectsGarbageItCreates: every MaxBytes/8 offered starts a
// collection unless one is running (values offered are either kept or, refused or evicted,
// garbage), and costs count what the heap really holds.
func TestCollectsGarbageItCreates(t *testing.T) {
	const budget = 1 << 20
	c, err := New(budget)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	for i := int64(0); i < 40; i++ { // 40 × 36 KiB (40 KiB on the heap) = 1.6 MB = 12.5 × budget/8
		c.Set(ns, i*65536, make([]byte, 36<<10))
	}
	c.Wait()
	// At most one per 128 KiB offered (fewer when one is still running).
	got := c.Stats().Collections
	assert.GreaterOrEqual(t, got, int64(1))
	assert.LessOrEqual(t, got, int64(12))

	assert.Equal(t, int64(40<<10), heapSize(36<<10), "large allocations take whole 8 KiB pages")
	assert.Equal(t, int64(64<<10), heapSize(64<<10))
	assert.Equal(t, int64(1000), heapSize(1000), "small ones are in size classes, counted as asked")
}
