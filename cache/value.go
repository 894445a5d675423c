package cache

import (
	"cmp"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/segstore/segstore/alignedbuf"
)

// Value is a cached value: bytes in a block that the cache reuses once
// nobody holds it. A holder has one reference; Release gives it back. The
// bytes stay the holder's, unchanged, until it releases them: a block goes
// back to its free list only when its last reference is dropped, and it
// is never reused before that.
//
// A pointer to a Value kept past its holder's Release (in the cache's
// index, or a caller's "last chunk" slot) may meet the block reused for
// other bytes. Such a pointer is therefore kept with the ID the value had
// when it was taken, and used through Acquire(id), which fails on a block
// that is free or now holds another value.
type Value struct {
	buf   []byte // the whole block
	n     int    // the value's length
	class int    // index in classes; -1: on the Go heap, not pooled
	id    uint64 // written only while refs is 0 (the block is nobody's)
	refs  atomic.Int64
	// cachedID is the ID under which the cache holds a reference, 0 if it
	// holds none: the cache drops its reference with a compare-and-swap,
	// so a second notice of the same eviction drops nothing.
	cachedID atomic.Uint64
	slab     *slab // nil for a block on the Go heap
	pools    *pools
	// key is the ristretto slot the value was last set for, so that
	// reclaim can evict it: written by Set before the cache holds it.
	key atomic.Uint64
}

// Bytes is the value's bytes; valid while the caller holds a reference.
// Len and cap are the value's length.
func (v *Value) Bytes() []byte { return v.buf[:v.n:v.n] }

// Size is the memory v occupies: its whole block (a pooled block is the
// smallest class that holds the value, at least 512 bytes) and its
// descriptor. A holder that bounds what it keeps counts this, not Len.
func (v *Value) Size() int64 { return v.cost() }

// ID identifies this use of the block: a block reused for another value
// gets another ID.
func (v *Value) ID() uint64 { return v.id }

// Acquire takes a reference if the block still holds the value with
// this ID, and reports whether it did.
func (v *Value) Acquire(id uint64) bool {
	for {
		r := v.refs.Load()
		if r <= 0 {
			return false // free: on a free list or being reused
		}
		if v.refs.CompareAndSwap(r, r+1) {
			break
		}
	}
	// v.id changes only while refs is 0, and this reference keeps it
	// above 0: the read is stable.
	if v.id != id {
		v.Release()
		return false
	}
	return true
}

// Release drops a reference. The last one returns the block to its
// slab's free list (a slab whose blocks are all free may then be
// unmapped).
func (v *Value) Release() {
	switch r := v.refs.Add(-1); {
	case r == 0:
		v.pools.put(v)
	case r < 0:
		panic("cache: Value released more often than acquired")
	}
}

// Block sizes. Every class is a multiple of 512 bytes, so blocks carved
// from a page-aligned slab start 512-byte aligned. Up to 8 KiB the classes
// are 512 bytes apart, above it eight to each doubling, so a block wastes
// less than 512 bytes or an eighth of the value. (With steps of 1.5 and 2,
// the index intervals of a log of 1 KiB records, about 4.1 KiB each, took
// 6 KiB blocks: the cache held a third less data than its budget said.) A
// value larger than the largest class gets a block of its own size on the
// Go heap, not pooled.
var classes = func() []int {
	var c []int
	for s := 512; s <= 8<<10; s += 512 {
		c = append(c, s)
	}
	for base := 8 << 10; base < maxClass; base *= 2 {
		for s := base + base/8; s <= 2*base; s += base / 8 {
			c = append(c, s)
		}
	}
	return c
}()

// maxClass is the largest pooled block: an index interval of 16 MiB plus
// a frame of 64 MiB (the largest the engine reads as one value) fits in
// 128 MiB.
const maxClass = 128 << 20

// BlockAlign is the alignment of every pooled block's first byte.
const BlockAlign = 512

// slabBytes is the size of a slab of small blocks (a class above it
// takes a slab of one block): small enough that evictions empty a slab,
// which is then unmapped, while its class still has live values.
const slabBytes = 64 << 10

// classOf returns the smallest class holding n bytes, or -1.
func classOf(n int) int {
	lo, hi := 0, len(classes)
	for lo < hi {
		m := (lo + hi) / 2
		if classes[m] >= n {
			hi = m
		} else {
			lo = m + 1
		}
	}
	if lo == len(classes) {
		return -1
	}
	return lo
}

// slab is one anonymous mapping cut into blocks of one class.
//
// Blocks live outside the Go heap on purpose. Go collects when the heap
// has grown by GOGC percent (default 100) of what was live after the last
// collection, and a cache is most of what is live: however little garbage
// the rest of the process makes, it is let grow to about the size of the
// cache before it is collected, and a long run reached twice the budget.
// Outside the heap, the cache's blocks do not count towards that growth,
// and the memory a slab held goes back to the system when it is unmapped
// (munmap), with no collection and no madvise.
type slab struct {
	mem     []byte
	class   int
	blocks  int
	vals    []Value  // its blocks' descriptors
	free    []*Value // its free blocks
	partial int      // index in pools.partial[class], -1 when none is free
}

// pools are the free blocks, by class, in slabs that have one. At most
// maxFree bytes stay free: past it a slab whose blocks are all free is
// unmapped, so memory held beyond the budget stays bounded. Each class
// has its own lock (16 readers missing at once contended on one), and
// the counters are atomics.
type pools struct {
	classes []classPool
	bytes   atomic.Int64 // bytes of free blocks
	mapped  atomic.Int64 // bytes of slabs mapped
	maxFree int64
	closed  atomic.Bool // the cache is closed: no block is kept free

	nextID   atomic.Uint64
	allocs   atomic.Int64 // blocks taken from a new slab (or the heap)
	reuses   atomic.Int64 // blocks reused
	unmapped atomic.Int64 // slabs returned to the system
	scans    atomic.Int64 // sparsest calls (reclaims that ran)
}

// classPool is one class's slabs that have a free block.
type classPool struct {
	mu      sync.Mutex
	partial []*slab // guarded by mu, and so are the slabs' free and partial
}

func newPools(maxFree int64) *pools {
	return &pools{classes: make([]classPool, len(classes)), maxFree: maxFree}
}

// get returns a value of n bytes, with one reference (the caller's) and a
// fresh ID. Its bytes are whatever the block held before.
func (p *pools) get(n int) *Value {
	k := classOf(n)
	var v *Value
	if k < 0 {
		v = &Value{buf: make([]byte, n), class: -1, pools: p}
		p.allocs.Add(1)
	} else {
		cp := &p.classes[k]
		cp.mu.Lock()
		v = p.takeLocked(cp, k)
		cp.mu.Unlock()
		if v != nil {
			p.reuses.Add(1)
		} else {
			v = p.newSlab(k)
			p.allocs.Add(1)
		}
	}
	// Nobody holds v (refs is 0: Acquire fails), so its fields are ours
	// until the store below publishes them.
	v.n = n
	v.id = p.nextID.Add(1)
	v.refs.Store(1)
	return v
}

// takeLocked pops a free block of class k, or returns nil. The caller
// holds cp.mu.
func (p *pools) takeLocked(cp *classPool, k int) *Value {
	l := cp.partial
	if len(l) == 0 {
		return nil
	}
	s := l[len(l)-1]
	v := s.free[len(s.free)-1]
	s.free[len(s.free)-1] = nil
	s.free = s.free[:len(s.free)-1]
	p.bytes.Add(-int64(classes[k]))
	if len(s.free) == 0 {
		cp.unlinkLocked(s)
	}
	return v
}

// newSlab maps a slab of class k and returns one of its blocks; the
// others go on the free lists. If the mapping fails (no memory), the
// block is taken from the Go heap instead, unpooled.
func (p *pools) newSlab(k int) *Value {
	size := classes[k]
	count := max(slabBytes/size, 1)
	mem, err := alignedbuf.MapPages(size * count)
	if err != nil {
		return &Value{buf: make([]byte, size), class: -1, pools: p}
	}
	s := &slab{mem: mem, class: k, blocks: count, partial: -1}
	vs := make([]Value, count) // one allocation for the slab's descriptors
	for i := range vs {
		vs[i] = Value{buf: mem[i*size : (i+1)*size : (i+1)*size], class: k, slab: s, pools: p}
	}
	s.vals = vs
	p.mapped.Add(int64(len(mem)))
	if count == 1 {
		return &vs[0]
	}
	cp := &p.classes[k]
	cp.mu.Lock()
	defer cp.mu.Unlock()
	for i := count - 1; i > 0; i-- {
		s.free = append(s.free, &vs[i])
	}
	p.bytes.Add(int64(len(s.free) * size))
	cp.linkLocked(s)
	return &vs[0]
}

func (cp *classPool) linkLocked(s *slab) {
	s.partial = len(cp.partial)
	cp.partial = append(cp.partial, s)
}

func (cp *classPool) unlinkLocked(s *slab) {
	l := cp.partial
	last := l[len(l)-1]
	l[s.partial], last.partial = last, s.partial
	l[len(l)-1] = nil
	cp.partial = l[:len(l)-1]
	s.partial = -1
}

// put takes back a block whose last reference was dropped. A slab left
// with only free blocks is unmapped once more than maxFree bytes are free
// (or the cache is closed).
func (p *pools) put(v *Value) {
	s := v.slab
	if s == nil {
		return // a heap block: the collector's
	}
	cp := &p.classes[s.class]
	size := int64(len(v.buf))
	cp.mu.Lock()
	s.free = append(s.free, v)
	free := p.bytes.Add(size)
	if s.partial < 0 {
		cp.linkLocked(s)
	}
	if len(s.free) < s.blocks || (!p.closed.Load() && free <= p.maxFree) {
		cp.mu.Unlock()
		return
	}
	// Every block of s is free, and so nobody holds one: no Acquire can
	// succeed on them (refs 0), and with s off the list none is handed out.
	cp.unlinkLocked(s)
	cp.mu.Unlock()
	p.release(s)
}

// release unmaps s, off its class's list with all its blocks free.
func (p *pools) release(s *slab) {
	p.bytes.Add(-int64(s.blocks * classes[s.class]))
	p.mapped.Add(-int64(len(s.mem)))
	s.free = nil
	if err := alignedbuf.UnmapPages(s.mem); err != nil {
		panic("cache: unmapping a slab failed: " + err.Error()) // only on a bad address: a bug here
	}
	p.unmapped.Add(1)
}

// excess is how many bytes of free blocks the pools hold past maxFree.
func (p *pools) excess() int64 { return p.bytes.Load() - p.maxFree }

// sparsest unmaps the slabs whose blocks are all free, and returns the
// values still in use in the slabs of small blocks that hold the most
// free bytes, enough slabs for their free blocks and those unmapped to
// cover want bytes: once those values are released, the slabs are all
// free and are unmapped. Free blocks of a class the workload has moved
// away from are held by the few values left in their slabs, and no other
// class can use them: the cache mapped nearly twice its budget after the
// value sizes moved through the classes. Each value comes with the cache
// ID it had (0: not cached), read under its class's lock, so a block
// reused since is not taken for it.
func (p *pools) sparsest(want int64) (vals []*Value, ids []uint64) {
	type cand struct {
		s    *slab
		free int64
	}
	var cands []cand
	p.scans.Add(1)
	for k := range p.classes {
		cp := &p.classes[k]
		var empty []*slab // kept while fewer bytes were free: unmapped first
		cp.mu.Lock()
		for i, s := range cp.partial {
			switch {
			case len(s.free) == s.blocks:
				empty = append(empty, s)
			case i == len(cp.partial)-1:
				// The slab the class takes its next blocks from (the
				// slab a class may keep partly used): evicting its
				// values, often just set, would only have the next
				// Alloc of the class map another.
				want -= int64(len(s.free) * classes[k])
			case s.blocks > 1:
				cands = append(cands, cand{s, int64(len(s.free) * classes[k])})
			}
		}
		for _, s := range empty {
			cp.unlinkLocked(s)
		}
		cp.mu.Unlock()
		for _, s := range empty {
			want -= int64(s.blocks * classes[k])
			p.release(s)
		}
	}
	slices.SortFunc(cands, func(a, b cand) int { return cmp.Compare(b.free, a.free) })
	for _, c := range cands {
		if want <= 0 {
			break
		}
		want -= c.free
		cp := &p.classes[c.s.class]
		cp.mu.Lock()
		for i := range c.s.vals {
			v := &c.s.vals[i]
			if v.refs.Load() > 0 {
				vals, ids = append(vals, v), append(ids, v.cachedID.Load())
			}
		}
		cp.mu.Unlock()
	}
	return vals, ids
}

// usage returns the bytes free and mapped now.
func (p *pools) usage() (free, mapped int64) { return p.bytes.Load(), p.mapped.Load() }

// close unmaps every slab whose blocks are all free and stops keeping
// free ones: the others are unmapped when their last block is released.
func (p *pools) close() {
	p.closed.Store(true)
	for k := range p.classes {
		cp := &p.classes[k]
		cp.mu.Lock()
		var empty []*slab
		for _, s := range cp.partial {
			if len(s.free) == s.blocks {
				empty = append(empty, s)
			}
		}
		for _, s := range empty {
			cp.unlinkLocked(s)
		}
		cp.mu.Unlock()
		for _, s := range empty {
			p.release(s)
		}
	}
}

// cost is what v occupies: its block and the Value itself.
func (v *Value) cost() int64 {
	if v.class < 0 {
		return heapSize(len(v.buf)) + valueOverhead
	}
	return int64(len(v.buf)) + valueOverhead
}

// valueOverhead is the size of a Value (a few words), counted in its cost.
const valueOverhead = 96

// heapSize is the heap memory a []byte of capacity n occupies: Go rounds
// allocations above 32 KiB up to whole 8 KiB pages (smaller ones to size
// classes within 12.5%), so the budget counts what is really held.
func heapSize(n int) int64 {
	const page = 8 << 10
	if n > 32<<10 {
		return int64((n + page - 1) / page * page)
	}
	return int64(n)
}
