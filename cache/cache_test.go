package cache

import (
	"bytes"
	"fmt"
	"math"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// set offers a copy of b for (ns, pos), as a caller that filled a value
// does, and lets go of its own reference.
func set(c *Cache, ns Namespace, pos int64, b []byte) {
	v := c.Alloc(len(b))
	copy(v.Bytes(), b)
	c.Set(ns, pos, v)
	v.Release()
}

// get returns a copy of the value cached for (ns, pos).
func get(c *Cache, ns Namespace, pos int64) ([]byte, bool) {
	v, ok := c.Get(ns, pos)
	if !ok {
		return nil, false
	}
	defer v.Release()
	return bytes.Clone(v.Bytes()), true
}

func TestGetSetAndNamespaces(t *testing.T) {
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	a, b := c.NewNamespace(), c.NewNamespace()
	require.NotEqual(t, a, b)
	require.NotZero(t, a)

	set(c, a, 4096, []byte("frame-a"))
	c.Wait()
	v, ok := get(c, a, 4096)
	require.True(t, ok)
	assert.Equal(t, []byte("frame-a"), v)
	_, ok = get(c, b, 4096)
	assert.False(t, ok, "another file's namespace must never see a's entries")
	_, ok = get(c, a, 4104)
	assert.False(t, ok)

	// A value for a key is the same verified bytes whoever sets it: one
	// no longer than the value held does not replace it.
	set(c, a, 4096, []byte("other"))
	set(c, a, 4096, []byte("frame-b"))
	c.Wait()
	v, _ = get(c, a, 4096)
	assert.Equal(t, []byte("frame-a"), v)

	st := c.Stats()
	assert.Equal(t, int64(2), st.Hits)
	assert.Equal(t, int64(2), st.Misses)
	assert.InDelta(t, 0.5, st.HitRatio(), 1e-9)
	assert.Equal(t, int64(1), st.Added)
	// Bytes counts the value's block, its descriptor and the entry's
	// bookkeeping: the smallest block holds 7 bytes.
	assert.Equal(t, int64(classes[0]+valueOverhead+entryCost), st.Bytes)
}

// TestLongerValueReplacesShorter: a longer value set for a key replaces
// the one held (the longer run of records read from the same position),
// whose block is let go of by the cache; a shorter one, or one of another
// key that shares the slot (an unaligned position), does not.
func TestLongerValueReplacesShorter(t *testing.T) {
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	short := c.Alloc(3)
	copy(short.Bytes(), "abc")
	c.Set(ns, 4096, short)
	c.Wait()
	require.EqualValues(t, 2, short.refs.Load(), "ours and the cache's")

	set(c, ns, 4096, []byte("abcdef"))
	c.Wait()
	got, ok := get(c, ns, 4096)
	require.True(t, ok)
	assert.Equal(t, []byte("abcdef"), got)
	assert.EqualValues(t, 1, short.refs.Load(), "the cache let go of the value replaced")
	short.Release()

	set(c, ns, 4096, []byte("abcd"))
	require.Equal(t, slot(ns, 4096), slot(ns, 4097))
	set(c, ns, 4097, []byte("another key, longer"))
	c.Wait()
	got, _ = get(c, ns, 4096)
	assert.Equal(t, []byte("abcdef"), got)
	_, ok = get(c, ns, 4097)
	assert.False(t, ok)
	st := c.Stats()
	assert.Equal(t, int64(classes[0]+valueOverhead+entryCost), st.Bytes, "one entry's bytes: the replaced value's cost left with it")
}

func TestBudgetIsRespected(t *testing.T) {
	const budget = 1 << 20
	c, err := New(budget)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	for i := int64(0); i < 1000; i++ {
		set(c, ns, i*4096, make([]byte, 4096))
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

// TestBlockClasses: a value takes the smallest class that holds it, every
// block starts BlockAlign-aligned and is its class's size, and a value
// larger than every class gets a heap block of its own, costed as the
// heap holds it.
func TestBlockClasses(t *testing.T) {
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	for i, size := range classes {
		require.Zero(t, size%BlockAlign)
		if i > 0 {
			require.Greater(t, size, classes[i-1])
			// A value one byte longer than the class below wastes less
			// than 512 bytes or an eighth of itself.
			require.LessOrEqual(t, size-classes[i-1], max(512, classes[i-1]/8), "class %d after %d", size, classes[i-1])
		}
		lo := 1
		if i > 0 {
			lo = classes[i-1] + 1
		}
		for _, n := range []int{lo, size} {
			require.Equal(t, i, classOf(n), "a value of %d bytes", n)
			if size > 4<<20 {
				continue // mapping every large class is slow under -race
			}
			var vs []*Value
			for range 3 { // several blocks of one slab
				v := c.Alloc(n)
				assert.Len(t, v.Bytes(), n)
				assert.Equal(t, n, cap(v.Bytes()))
				assert.Len(t, v.buf, size)
				assert.Zero(t, uintptr(unsafe.Pointer(unsafe.SliceData(v.buf)))%BlockAlign, "class %d", size)
				assert.Equal(t, int64(size+valueOverhead), v.cost())
				vs = append(vs, v)
			}
			for _, v := range vs {
				v.Release()
			}
		}
	}
	require.Equal(t, -1, classOf(maxClass+1))
	v := c.Alloc(maxClass + 1)
	assert.Len(t, v.Bytes(), maxClass+1)
	assert.Equal(t, heapSize(maxClass+1)+valueOverhead, v.cost())
	v.Release()

	assert.Equal(t, int64(40<<10), heapSize(36<<10), "large allocations take whole 8 KiB pages")
	assert.Equal(t, int64(64<<10), heapSize(64<<10))
	assert.Equal(t, int64(1000), heapSize(1000), "small ones are in size classes, counted as asked")
	st := c.Stats()
	assert.LessOrEqual(t, st.Pooled, st.MaxPooled)
	assert.Positive(t, st.Unmapped, "slabs left all free beyond MaxPooled are unmapped")
	c.Close()
	st = c.Stats()
	assert.Zero(t, st.Pooled, "a closed cache keeps nothing free")
	assert.Zero(t, st.Mapped, "nor anything mapped once nobody holds a value")
}

// TestReusedBlockIsNotTheOldValue: a block released by its last holder is
// reused for the next value of its class, and a pointer kept with the old
// ID (the cache's index, a caller's slot) no longer acquires it; a Get
// whose entry names a reused block misses.
func TestReusedBlockIsNotTheOldValue(t *testing.T) {
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	v := c.Alloc(3000)
	id := v.ID()
	require.True(t, v.Acquire(id))
	v.Release()
	v.Release() // the last reference: back on the free list
	assert.False(t, v.Acquire(id), "a free block")
	w := c.Alloc(2600) // the same class: the same block
	require.Same(t, v, w)
	assert.NotEqual(t, id, w.ID())
	assert.False(t, v.Acquire(id), "a block reused for another value")
	require.True(t, w.Acquire(w.ID()))
	w.Release()

	// The cache's index naming a block that was reused since.
	ns := c.NewNamespace()
	x := c.Alloc(100)
	copy(x.Bytes(), "x")
	c.Set(ns, 8, x)
	c.Wait()
	got, ok := c.Get(ns, 8)
	require.True(t, ok)
	require.Same(t, x, got)
	got.Release()
	// Force the block free under the index (as if the entry were stale):
	// drop the cache's reference and the caller's.
	(&entry{v: x, id: x.ID()}).drop()
	x.Release()
	y := c.Alloc(100)
	require.Same(t, x, y)
	_, ok = c.Get(ns, 8)
	assert.False(t, ok, "the index names a block that now holds another value")
	y.Release()
	st := c.Stats()
	assert.Equal(t, int64(2), st.Allocs)
	assert.Equal(t, int64(2), st.Reuses)
	assert.Panics(t, func() { c.Alloc(10).Release(); y.Release() }, "a release too many is a bug, not silent reuse")
}

// TestValuesMatchTheirKeysUnderChurn: goroutines Get, Set and hold values
// while the cache evicts and reuses blocks (budgets of 64 KiB and 1 MiB,
// 16 to 4,096 keys, values of 100 B to 40 KiB, several sizes at once):
// every value returned holds its own key's bytes, and still does after the
// holder let other goroutines churn the cache (a block is never reused
// under a holder). go test -race checks the reference counting.
func TestValuesMatchTheirKeysUnderChurn(t *testing.T) {
	fill := func(b []byte, ns Namespace, pos int64) {
		for i := range b {
			b[i] = byte(pos>>3) ^ byte(ns)*31 ^ byte(i)*7 ^ byte(len(b))
		}
	}
	size := func(pos int64, sizes []int) int { return sizes[int(pos>>3)%len(sizes)] }
	for _, tc := range []struct {
		budget int64
		keys   int
		sizes  []int
	}{
		{64 << 10, 16, []int{100}},
		{64 << 10, 256, []int{3000, 5000}},
		{1 << 20, 64, []int{40 << 10}},
		{1 << 20, 4096, []int{100, 1500, 9000, 33 << 10}},
		{1 << 20, 1024, []int{512, 4096, 6144}},
	} {
		t.Run(fmt.Sprintf("budget=%d/keys=%d/sizes=%v", tc.budget, tc.keys, tc.sizes), func(t *testing.T) {
			c, err := New(tc.budget)
			require.NoError(t, err)
			defer c.Close()
			nss := []Namespace{c.NewNamespace(), c.NewNamespace()}
			var wg sync.WaitGroup
			var wrong, hits atomic.Int64
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					want := make([]byte, 64<<10)
					var held []*Value
					var heldKeys [][2]int64
					check := func(v *Value, ns Namespace, pos int64) {
						n := size(pos, tc.sizes)
						fill(want[:n], ns, pos)
						if !bytes.Equal(v.Bytes(), want[:n]) {
							wrong.Add(1)
						}
					}
					for i := range 1500 {
						// Each key twice in a row: the second Get finds
						// the value the first miss set through its hint
						// (unless ristretto let go of it between), so
						// hits do not hang on how the goroutines
						// interleave.
						ns := nss[(i/2+g)%2]
						pos := int64((i/2*7919+g*104729)%tc.keys) * 8
						if v, ok := c.Get(ns, pos); ok {
							hits.Add(1)
							check(v, ns, pos)
							held = append(held, v)
							heldKeys = append(heldKeys, [2]int64{int64(ns), pos})
						} else {
							v := c.Alloc(size(pos, tc.sizes))
							fill(v.Bytes(), ns, pos)
							c.Set(ns, pos, v)
							v.Release()
						}
						if len(held) == 8 || i%97 == 0 {
							// Held across others' Sets and evictions: still ours.
							for k, v := range held {
								check(v, Namespace(heldKeys[k][0]), heldKeys[k][1])
								v.Release()
							}
							held, heldKeys = held[:0], heldKeys[:0]
						}
					}
					for _, v := range held {
						v.Release()
					}
				}()
			}
			wg.Wait()
			c.Wait()
			// Hints name only entries ristretto holds: one it let go of
			// would keep a value's descriptor (and its slab's) alive.
			for i := range c.hints {
				for j := range c.hints[i] {
					if e := c.hints[i][j].e.Load(); e != nil {
						assert.Equal(t, e.id, e.v.cachedID.Load(), "a hint names an entry the cache let go of")
					}
				}
			}
			st := c.Stats()
			assert.Zero(t, wrong.Load(), "values that were not their key's bytes")
			assert.Positive(t, hits.Load())
			assert.LessOrEqual(t, st.Bytes, tc.budget)
			// Free blocks beyond MaxPooled sit in slabs that also hold values
			// (fragmentation): a few slabs per size in use here.
			assert.LessOrEqual(t, st.Mapped, tc.budget+st.MaxPooled+int64(4*slabBytes*len(tc.sizes)), "%+v", st)
			if tc.keys*tc.sizes[0] > int(tc.budget) {
				assert.Positive(t, st.Reuses, "a churning cache reuses blocks: %+v", st)
			}
		})
	}
}

// TestMemoryStaysWithinBudget: offering ten times the budget (160 MiB of
// values of 1 to 40 KiB, mixed, to a 16 MiB cache) keeps the memory the
// cache holds, its mapped slabs plus the Go heap's growth, within the
// budget, the free blocks it keeps (MaxPooled) and a small constant at
// every point, without a collection or madvise: evicted and refused
// blocks are reused or unmapped. With values on the Go heap the heap alone
// grew to 25.8 MiB by the end of this test (Go collects only when the heap
// has doubled since the last collection), and about twice the budget in
// longer runs.
func TestMemoryStaysWithinBudget(t *testing.T) {
	const budget = 16 << 20
	c, err := New(budget)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	heap := func() int64 {
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		metrics.Read(s)
		return int64(s[0].Value.Uint64())
	}
	runtime.GC()
	base := heap()
	var peak, peakHeap int64
	sizes := []int{1 << 10, 5 << 10, 9 << 10, 17 << 10, 40 << 10}
	offered := int64(0)
	for i := int64(0); offered < 10*budget; i++ {
		n := sizes[i%int64(len(sizes))]
		v := c.Alloc(n)
		v.Bytes()[0] = byte(i)
		c.Set(ns, i*8, v)
		v.Release()
		offered += int64(n)
		if i%16 == 0 {
			c.Wait()
			h := heap() - base
			peak, peakHeap = max(peak, h+c.Stats().Mapped), max(peakHeap, h)
		}
	}
	c.Wait()
	st := c.Stats()
	t.Logf("peak %.1f MiB (heap growth %.1f MiB) for a %d MiB budget; %+v", float64(peak)/(1<<20), float64(peakHeap)/(1<<20), budget>>20, st)
	const slack = 4 << 20 // ristretto's entries, the slabs' descriptors, the test's own garbage
	assert.LessOrEqual(t, peak, budget+st.MaxPooled+slack, "stats %+v", st)
	// Whether eviction (ristretto samples its victims at random) ever
	// empties a whole slab here is chance: it did in about 9 of 10 runs.
	// TestBlockClasses proves that slabs left all free are unmapped.
	assert.Positive(t, st.Reuses)
}

// TestEntryHeapCost: what a cached value takes on the Go heap, its
// descriptor and every structure ristretto keeps for its entry, measured
// after a collection, is at most half of what its cost counts for it
// (valueOverhead + entryCost): the other half is the heap's growth before
// the collector runs. It fails if a new Go or ristretto release makes
// entries heavier than the budget says.
func TestEntryHeapCost(t *testing.T) {
	heap := func() int64 {
		runtime.GC()
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		metrics.Read(s)
		return int64(s[0].Value.Uint64())
	}
	const n = 50000
	c, err := New(n * (8<<10 + valueOverhead + entryCost)) // room for every value
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	base := heap()
	for i := int64(0); i < n; i++ {
		v := c.Alloc(4200) // an index interval of 1 KiB records
		c.Set(ns, i*8192, v)
		v.Release()
		if i%1000 == 999 {
			c.Wait() // Sets past ristretto's buffer would be dropped
		}
	}
	c.Wait()
	st := c.Stats()
	require.Equal(t, int64(n), st.Added, "every value admitted: %+v", st)
	perEntry := (heap() - base) / n
	t.Logf("%d bytes of heap per cached value; counted %d", perEntry, valueOverhead+entryCost)
	assert.LessOrEqual(t, 2*perEntry, int64(valueOverhead+entryCost))
	assert.Equal(t, int64(n)*(4608+valueOverhead+entryCost), st.Bytes, "a 4200-byte value takes a 4.5 KiB block")
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
		set(c, p.ns[0], p.pos[0], a)
		c.Wait()
		set(c, p.ns[1], p.pos[1], b)
		c.Wait()
		v, ok := get(c, p.ns[0], p.pos[0])
		require.True(t, ok, "pair %d", i)
		assert.Equal(t, a, v, "pair %d", i)
		if v, ok := get(c, p.ns[1], p.pos[1]); ok {
			assert.Equal(t, b, v, "pair %d: a key sharing a slot must never get the other's value", i)
		}
	}
	for _, pos := range []int64{-8, -1, 1 << 62} {
		assert.NotPanics(t, func() { set(c, ns[0], pos, []byte("x")) })
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
					set(c, ns, pos, val(pos))
					if v, ok := get(c, ns, pos); ok && !bytes.Equal(v, val(pos)) {
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
		set(c, ns, 0, val(0))
		c.Wait()
		c.Close()
		close(closed)
		wg.Wait()
		c.Close()
		_, ok := get(c, ns, 0)
		assert.False(t, ok, "try %d: a closed cache holds nothing", try)
		assert.Zero(t, wrong.Load(), "try %d: no Get returned another key's value", try)
	}
}

// TestHintsOfKeysSharingASet: four values whose keys fall in one set of
// the hint table are all hinted, from their Set on (the first Get of a
// value needs no lookup in ristretto), and a value let go of is hinted no
// more.
func TestHintsOfKeysSharingASet(t *testing.T) {
	c, err := New(1 << 20)
	require.NoError(t, err)
	defer c.Close()
	ns := c.NewNamespace()
	set0 := c.hint(slot(ns, 0))
	var keys []int64
	for pos := int64(0); len(keys) < 4; pos += 8 {
		if c.hint(slot(ns, pos)) == set0 {
			keys = append(keys, pos)
		}
	}
	for _, pos := range keys {
		set(c, ns, pos, []byte(fmt.Sprint(pos)))
	}
	c.Wait()
	for _, pos := range keys {
		e := set0.find(slot(ns, pos))
		require.NotNil(t, e, "no hint for position %d", pos)
		assert.Equal(t, pos, e.pos)
		v, ok := get(c, ns, pos)
		require.True(t, ok)
		assert.Equal(t, []byte(fmt.Sprint(pos)), v)
	}
	e := set0.find(slot(ns, keys[0]))
	c.rc.Del(slot(ns, keys[0]))
	c.Wait()
	assert.Nil(t, set0.find(slot(ns, keys[0])), "a hint to a value the cache let go of")
	_, ok := get(c, ns, keys[0])
	assert.False(t, ok)
	assert.Zero(t, e.v.cachedID.Load())
}
