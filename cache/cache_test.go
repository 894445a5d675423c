package cache

import (
	"bytes"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
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
	for _, n := range []int64{MaxBytes + 1, math.MaxInt64} {
		require.NotPanics(t, func() { _, err = New(n) }, "a budget of %d", n)
		assert.ErrorIs(t, err, ErrTooLarge, "a budget of %d", n)
	}
	c, err := New(1 << 20)
	require.NoError(t, err)
	c.Close()
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

// Segments can be larger than 32 GiB (imports accept up to 64 GiB), and
// keys beyond that share ristretto slots with other keys: a value is only
// ever returned for the exact (namespace, position) it was set for.
func TestPositionsBeyond32GiB(t *testing.T) {
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	ns := []Namespace{4, 5, 2, 3}
	const g = int64(1) << 30
	// slot(ns, pos) = ns<<32 ^ pos/8: each pair of keys below share a slot.
	pairs := []struct {
		ns  [2]Namespace
		pos [2]int64
	}{
		{[2]Namespace{ns[2], ns[3]}, [2]int64{0, 32 * g}},        // ns 3 ^ 1 = 2
		{[2]Namespace{ns[0], ns[0]}, [2]int64{4096, 4097}},       // an unaligned position
		{[2]Namespace{ns[1], ns[1] ^ 3}, [2]int64{8, 96*g + 8}},  // 96 GiB: ns ^ 3
		{[2]Namespace{ns[3], ns[3]}, [2]int64{64*g - 8, 64 * g}}, // the largest import, no panic
	}
	for i, p := range pairs {
		require.Equal(t, i != 3, slot(p.ns[0], p.pos[0]) == slot(p.ns[1], p.pos[1]), "pair %d", i)
		a, b := []byte(fmt.Sprint("a", i)), []byte(fmt.Sprint("b", i))
		c.Set(p.ns[0], p.pos[0], a)
		c.Wait()
		c.Set(p.ns[1], p.pos[1], b)
		c.Wait()
		v, ok := c.Get(p.ns[0], p.pos[0])
		require.True(t, ok, "pair %d", i)
		assert.Equal(t, a, v, "pair %d", i)
		if v, ok := c.Get(p.ns[1], p.pos[1]); ok {
			assert.Equal(t, b, v, "pair %d: a key sharing a slot must never get the other's value", i)
		}
	}
	for _, pos := range []int64{-8, -1, 1 << 62} {
		assert.NotPanics(t, func() { c.Set(ns[0], pos, []byte("x")) })
	}
}

// Close may run while other goroutines Get, Set and Wait: none of them
// panics (ristretto's own Set sends on a channel its Close closes), a Get
// during or after Close misses or returns the value set, and a second
// Close does nothing. go test -race checks the goroutines against Close.
func TestCloseWhileInUse(t *testing.T) {
	for try := range 20 {
		c, err := New(1 << 20)
		require.NoError(t, err)
		ns := c.NewNamespace()
		val := func(pos int64) []byte { return []byte(fmt.Sprintf("v%d", pos)) }
		closed := make(chan struct{})
		var wg sync.WaitGroup
		var wrong atomic.Int64
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int64(0); ; i++ {
					pos := (i*4 + int64(g)) % 512 * 8
					c.Set(ns, pos, val(pos))
					if v, ok := c.Get(ns, pos); ok && !bytes.Equal(v, val(pos)) {
						wrong.Add(1)
					}
					if i%64 == 0 {
						c.Wait()
					}
					select {
					case <-closed:
						if i > 100 {
							return
						}
					default:
					}
				}
			}()
		}
		c.Set(ns, 0, val(0))
		c.Wait()
		c.Close()
		close(closed)
		wg.Wait()
		c.Close()
		_, ok := c.Get(ns, 0)
		assert.False(t, ok, "try %d: a closed cache holds nothing", try)
		assert.Zero(t, wrong.Load(), "try %d: no Get returned another key's value", try)
	}
}
