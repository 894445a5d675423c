// Package cache is segstore's user-space cache of verified frame bytes, on
// ristretto (TinyLFU admission, sampled LFU eviction), bounded by a budget
// in bytes that several logs can share.
//
// What is cached: the bytes of a frame whose checksum was verified when they
// came from the device. A hit is served without checking the checksum again
// (checksums are checked when bytes come from the device, not on every hit:
// re-checking a 64 KiB frame per point read costs microseconds).
//
// Values live in blocks that the cache reuses (see Value): Alloc hands out
// a block, Set offers it, and a block evicted or refused goes back to a
// free list once its last holder releases it, so a cache churning through
// a log larger than itself makes no garbage for Go's collector to find
// late. A value's cost is the block it really occupies.
//
// Keys are (namespace, position), any position a file can have. Each open
// segment file takes a fresh namespace from NewNamespace, so entries of a
// deleted or rewritten file can never be returned for another one; they age
// out under the budget.
package cache

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
)

// Namespace identifies one file's entries. Zero is never handed out.
type Namespace uint32

// Stats are the cache's counters since New.
type Stats struct {
	Hits, Misses int64
	Added        int64 // values admitted
	Evicted      int64 // values evicted to stay within the budget
	Refused      int64 // values the admission policy (or a full buffer, or too many bytes in flight) turned away
	Bytes        int64 // bytes held now: blocks plus ristretto's per-entry bookkeeping
	MaxBytes     int64
	// Blocks: taken from a newly mapped slab, and reused; slabs unmapped
	// (returned to the system once all their blocks were free and more
	// than MaxPooled bytes were). Pooled is the bytes of free blocks now,
	// Mapped the bytes of all slabs (held values, free blocks, and values
	// evicted but still held by a reader).
	Allocs, Reuses, Unmapped int64
	Pooled, MaxPooled        int64
	Mapped                   int64
}

// HitRatio is Hits / (Hits + Misses), or 0.
func (s Stats) HitRatio() float64 {
	if s.Hits+s.Misses == 0 {
		return 0
	}
	return float64(s.Hits) / float64(s.Hits+s.Misses)
}

// Cache is safe for concurrent use, Close included: a Get, Set or Wait
// during or after Close does nothing (a Get misses).
type Cache struct {
	// mu guards rc against Close: ristretto's Set sends on a channel its
	// Close closes, so a Set racing Close would panic. Get, Set and Wait
	// hold mu shared (ristretto's Set never blocks: a full buffer drops the
	// value), Close exclusively.
	mu       sync.RWMutex
	closed   bool
	rc       *ristretto.Cache[uint64, entry]
	maxBytes int64
	nextNS   atomic.Uint32
	pools    *pools
	// pending: bytes of values Set but not yet taken up by ristretto's
	// policy (its goroutine applies Sets from a buffer of 32k); a Set past
	// maxPending is dropped, so values in flight stay bounded too.
	pending    atomic.Int64
	maxPending int64
	dropped    atomic.Int64 // Sets dropped for that
}

// ErrTooSmall: the budget cannot hold anything useful.
var ErrTooSmall = errors.New("cache: budget must be at least 64 KiB")

// MaxBytes is the largest budget New accepts. ristretto sizes its
// admission counters from the budget up front (10 per 4 KiB of it, a few
// bytes each); a larger budget than this is a mistake (more memory than a
// block cache of one process sensibly holds) that would allocate
// gigabytes of counters, or, near math.MaxInt64, panic inside ristretto.
const MaxBytes = 256 << 30

// ErrTooLarge: the budget is above MaxBytes.
var ErrTooLarge = errors.New("cache: budget must be at most 256 GiB")

// maxPooled bounds the free lists: a sixteenth of the budget, at least 256
// KiB and at most 16 MiB. Blocks come back to them as ristretto evicts or
// refuses values (in its own goroutine, a little after the Set that
// displaced them), and leave as Alloc takes them, so they only need to
// absorb that lag and the spread of value sizes.
func maxPooled(budget int64) int64 { return min(max(budget/16, 256<<10), 16<<20) }

// New returns a cache holding at most maxBytes of values (plus ristretto's
// per-entry bookkeeping, which counts against the budget too); maxBytes is
// at least 64 KiB and at most MaxBytes. Beyond the budget the cache holds
// at most Stats.MaxPooled bytes of free blocks, and the values its callers
// still hold.
func New(maxBytes int64) (*Cache, error) {
	if maxBytes < 64<<10 {
		return nil, fmt.Errorf("%w (got %d)", ErrTooSmall, maxBytes)
	}
	if maxBytes > MaxBytes {
		return nil, fmt.Errorf("%w (got %d)", ErrTooLarge, maxBytes)
	}
	c := &Cache{maxBytes: maxBytes, pools: newPools(maxPooled(maxBytes)), maxPending: maxPooled(maxBytes)}
	// ristretto advises 10 counters per expected entry; entries are frames
	// of ~4 KiB and more.
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, entry]{
		NumCounters: max(maxBytes/4096*10, 1000),
		MaxCost:     maxBytes,
		BufferItems: 64,
		Metrics:     true, // sharded atomic counters: the source of Stats
		// A value for a key is the same verified bytes whoever sets it (or,
		// for two keys that share a slot, the first one set keeps it).
		ShouldUpdate: func(cur, prev entry) bool { return false },
		// Every value ristretto lets go of (evicted, refused, or cleared by
		// Close) drops the cache's reference.
		OnExit: func(e entry) { e.drop() },
		// Called as ristretto's goroutine takes up each Set (given cost 0):
		// the value is no longer pending.
		Cost: func(e entry) int64 {
			cost := e.v.cost()
			c.pending.Add(-cost)
			return cost
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.rc = rc
	return c, nil
}

// NewNamespace returns a namespace no other caller has.
func (c *Cache) NewNamespace() Namespace {
	for {
		if ns := Namespace(c.nextNS.Add(1)); ns != 0 {
			return ns
		}
	}
}

// entry is a cached value with the full key it was set under: ristretto
// keeps one value per 64-bit slot, and a (namespace, position) pair does not
// fit in 64 bits, so a value is only returned for the key it was set for.
// id is the value's ID when it was set: the block may have been reused by
// the time a Get finds the entry (see Value.Acquire).
type entry struct {
	v   *Value
	id  uint64
	pos int64
	ns  Namespace
}

// drop releases the cache's reference on e's value, once.
func (e entry) drop() {
	if e.v != nil && e.v.cachedID.CompareAndSwap(e.id, 0) {
		e.v.Release()
	}
}

// slot is the 64-bit ristretto key of (ns, pos): the namespace in the high
// 32 bits, the position in units of 8 bytes (frames are 8-byte aligned) in
// the low ones, so keys of positions below 32 GiB never share a slot within
// or across namespaces. Higher positions (and unaligned ones) may share a
// slot with another key; entry tells them apart.
func slot(ns Namespace, pos int64) uint64 { return uint64(ns)<<32 ^ uint64(pos)>>3 }

// Get returns the value cached for (ns, pos), with a reference the caller
// must Release; nothing once closed.
func (c *Cache) Get(ns Namespace, pos int64) (*Value, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, false
	}
	e, ok := c.rc.Get(slot(ns, pos))
	if !ok || e.ns != ns || e.pos != pos || !e.v.Acquire(e.id) {
		// A block evicted and reused since ristretto's index named it
		// holds another value: a miss.
		return nil, false
	}
	return e.v, true
}

// Alloc returns a value of n bytes (any n ≥ 0) for the caller to fill,
// holding one reference (the caller's). Its bytes are whatever its block
// held before; a pooled block starts at a BlockAlign-aligned address.
// Values of a closed cache work, but their blocks are not reused.
func (c *Cache) Alloc(n int) *Value { return c.pools.get(n) }

// Set offers v, filled and verified, for (ns, pos), any position; the
// admission policy may refuse it, and so does a slot held by another key.
// The cache takes a reference of its own (it never mutates v); the
// caller keeps its reference and releases it when done. Once closed, or
// if v was set before, it does nothing.
func (c *Cache) Set(ns Namespace, pos int64, v *Value) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	cost := v.cost()
	if n := c.pending.Add(cost); n > c.maxPending && n != cost { // one alone always goes
		c.pending.Add(-cost)
		c.dropped.Add(1)
		return
	}
	if !v.cachedID.CompareAndSwap(0, v.id) {
		c.pending.Add(-cost)
		return
	}
	v.refs.Add(1)
	e := entry{v: v, id: v.id, pos: pos, ns: ns}
	if !c.rc.Set(slot(ns, pos), e, 0) {
		c.pending.Add(-cost)
		e.drop() // dropped (a full buffer): ristretto never saw it
	}
}

// Wait blocks until every Set so far has been applied (for tests and
// benchmarks: Set is asynchronous).
func (c *Cache) Wait() {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.closed {
		c.rc.Wait()
	}
}

// MaxBytes is the budget.
func (c *Cache) MaxBytes() int64 { return c.maxBytes }

// Room is how many more bytes the cache takes now without evicting
// anything (0 once closed).
func (c *Cache) Room() int64 {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return 0
	}
	return c.rc.RemainingCost()
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	m := c.rc.Metrics
	p := c.pools
	free, mapped := p.usage()
	return Stats{
		Hits: int64(m.Hits()), Misses: int64(m.Misses()),
		Added: int64(m.KeysAdded()), Evicted: int64(m.KeysEvicted()),
		Refused: int64(m.SetsDropped()+m.SetsRejected()) + c.dropped.Load(),
		Bytes:   int64(m.CostAdded()) - int64(m.CostEvicted()), MaxBytes: c.maxBytes,
		Allocs: p.allocs.Load(), Reuses: p.reuses.Load(), Unmapped: p.unmapped.Load(),
		Pooled: free, MaxPooled: p.maxFree, Mapped: mapped,
	}
}

// Close releases the cache's goroutines and memory. It waits for the Gets,
// Sets and Waits in progress; a second Close does nothing.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		c.rc.Close() // drops the cache's references (OnExit)
		c.pools.close()
	}
}
