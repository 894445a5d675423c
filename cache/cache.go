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
	"math"
	"math/bits"
	"math/rand/v2"
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
	Bytes        int64 // bytes held now: blocks, their descriptors and the bookkeeping of each entry
	MaxBytes     int64
	// Blocks: taken from a newly mapped slab, and reused; slabs unmapped
	// (returned to the system once all their blocks were free and more
	// than MaxPooled bytes were). Pooled is the bytes of free blocks now,
	// Mapped the bytes of all slabs (held values, free blocks, and values
	// evicted but still held by a reader).
	Allocs, Reuses, Unmapped int64
	Pooled, MaxPooled        int64
	Mapped                   int64
	// Reclaimed counts values evicted because their blocks kept slabs of
	// mostly free blocks mapped while more than MaxPooled bytes were free.
	Reclaimed int64
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
	closed   atomic.Bool // set under mu held exclusively
	rc       *ristretto.Cache[uint64, *entry]
	maxBytes int64
	nextNS   atomic.Uint32
	pools    *pools
	// pending: bytes of values Set but not yet taken up by ristretto's
	// policy (its goroutine applies Sets from a buffer of 32k); a Set past
	// maxPending is dropped, so values in flight stay bounded too.
	pending    atomic.Int64
	maxPending int64
	dropped    atomic.Int64 // Sets dropped for that
	// reclaiming is set while a reclaim runs; reclaimed counts the values
	// it evicted.
	reclaiming atomic.Bool
	reclaimed  atomic.Int64
	// reclaimFloor: bytes free when the last reclaim ended, or fewer seen
	// since (see Alloc).
	reclaimFloor atomic.Int64
	// hints is the set-associative table in front of ristretto's index
	// that serves most hits (see Get); hintShift turns a key's hash into
	// its set.
	hints     []hintSet
	hintShift uint
	// hits and misses are counted here (ristretto sees only the sampled
	// hint hits), striped so readers on different cores do not share a
	// cache line.
	hits, misses stripes
}

// stripes is a counter split over cache lines: an Add touches the stripe
// of its key, a Load sums them.
type stripes [16]struct {
	n atomic.Int64
	_ [56]byte
}

func (s *stripes) add(key uint64) { s[key%uint64(len(s))].n.Add(1) }

func (s *stripes) load() int64 {
	var n int64
	for i := range s {
		n += s[i].n.Load()
	}
	return n
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

// New returns a cache holding at most maxBytes of values (and their
// bookkeeping on the Go heap, which counts against the budget too); maxBytes is
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
	hb := hintBits(maxBytes) - uint(bits.Len(hintWays-1))
	c.hints, c.hintShift = make([]hintSet, 1<<hb), 64-hb
	// ristretto advises 10 counters per expected entry; entries are frames
	// of ~4 KiB and more.
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *entry]{
		NumCounters: max(maxBytes/4096*10, 1000),
		MaxCost:     maxBytes,
		BufferItems: 64,
		// entryCost counts ristretto's bookkeeping, measured, instead of
		// the size of its store item alone.
		IgnoreInternalCost: true,
		Metrics:            true, // sharded atomic counters: the source of Stats
		// A value set again for its key replaces the one held only if it is
		// longer: the values of one key are verified bytes of one file from
		// the same position, so a longer one holds all the shorter one did
		// and more (a point read that read a run of records further, after
		// a hit on a shorter run missed its record; keeping the shorter one
		// would send every read of that record to the device). For two keys
		// that share a slot, the first one set keeps it. prev is still held
		// by the cache here (its reference is dropped after it leaves
		// ristretto's store), so its length is stable.
		//
		// A refused value still reaches ristretto's policy as a new key,
		// and the policy, which has the key, takes the refused value's
		// cost for it: the held value would be counted at the cost of the
		// one refused (a short value refused for a key that holds a long
		// one made the budget count a fraction of what was held). The
		// refused entry therefore carries the held value's cost, and Cost
		// gives the policy the cost of the value held when it runs (the
		// larger of the two if none is held by then).
		//
		// An update changes the cost ristretto counts for the key without
		// evicting anything, so a longer value that takes a larger block
		// is not an update: Set deletes the shorter value first, and makes
		// the longer a new key that is admitted or not, with evictions. One
		// that meets a value set for the key since that delete (another
		// Set's) is refused here: taken as an update, the budget was
		// exceeded by the growth (a churn of values of several lengths held
		// a tenth more than the budget).
		ShouldUpdate: func(cur, prev *entry) bool {
			if cur.ns == prev.ns && cur.pos == prev.pos && cur.v.n > prev.v.n && cur.v.cost() <= prev.v.cost() {
				return true
			}
			// cur is not yet shared: refused, it is only queued.
			cur.held = uint32(min((prev.v.cost()+entryCost+31)/32, math.MaxUint32))
			return false
		},
		// Every value ristretto lets go of (evicted, refused, replaced, or
		// cleared by Close) drops the cache's reference, and its hint.
		OnExit: func(e *entry) {
			e.drop()
			c.unhint(e)
		},
		// Called as ristretto's goroutine takes up each Set (given cost 0):
		// the value is no longer pending.
		//
		// A new value for a slot whose value was deleted (Set deletes a
		// shorter one) can meet another value set for the slot meanwhile,
		// which ristretto stored first: the policy then has the key, refuses
		// this one and takes its cost for the one held. Cost runs in
		// ristretto's goroutine just before that, so it gives the held
		// one's cost.
		Cost: func(e *entry) int64 {
			cost := e.v.cost() + entryCost
			c.pending.Add(-cost)
			if prev, ok := c.rc.Get(slot(e.ns, e.pos)); ok && prev != e {
				// Refused or not, e meets a held value: the policy takes
				// this cost for the one held, as it is now.
				return prev.v.cost() + entryCost
			}
			return max(cost, int64(e.held)*32)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.rc = rc
	return c, nil
}

// entryCost is what holding a value costs the cache beyond the value's
// own Size: the entry, ristretto's store item and map slot, its policy's
// record of the key's cost and its sampled counters. TestEntryHeapCost
// measures the heap a cached value takes, descriptor included, after a
// collection (about 300 bytes); entryCost counts about twice that, less
// the descriptor, because the collector lets the heap grow to twice what
// is live before it collects. Values of index intervals are a few KiB,
// so this is about a tenth of what they cost, and a budget filled with
// them would otherwise be exceeded by that much.
const entryCost = 512

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
// the time a Get finds the entry (see Value.Acquire). An entry never
// changes once made, so a hint can name it with one pointer.
type entry struct {
	v   *Value
	id  uint64
	pos int64
	ns  Namespace
	// held is the cost, in units of 32 bytes rounded up, of the value
	// held for the entry's ristretto slot when the entry was refused for
	// it (ShouldUpdate), 0 if none was: written before the entry is
	// queued, read as it is taken up. (32 bits, so the entry stays 32
	// bytes; costs are multiples of 32, and below 128 GiB.)
	held uint32
}

// drop releases the cache's reference on e's value, once.
func (e *entry) drop() {
	if e != nil && e.v != nil && e.v.cachedID.CompareAndSwap(e.id, 0) {
		e.v.Release()
	}
}

// slot is the 64-bit ristretto key of (ns, pos): the namespace in the high
// 32 bits, the position in units of 8 bytes (frames are 8-byte aligned) in
// the low ones, so keys of positions below 32 GiB never share a slot within
// or across namespaces. Higher positions (and unaligned ones) may share a
// slot with another key; entry tells them apart.
func slot(ns Namespace, pos int64) uint64 { return uint64(ns)<<32 ^ uint64(pos)>>3 }

// hintBits: the hint table has a slot per 4 KiB of budget (a value is a
// run of records of about an index interval, or more), rounded up to a
// power of two, from 2^10 to 2^19 slots (16 KiB to 8 MiB).
func hintBits(budget int64) uint {
	return uint(min(max(bits.Len64(uint64(budget-1)>>12), 10), 19))
}

// hintWays: a key may be hinted in any of the slots of its set, which
// share a cache line. In a direct-mapped table (one slot a key) two values
// read often that share a slot keep replacing each other, and a cache
// full of values of about 4 KiB has about as many values as slots.
const hintWays = 4

// hintSlot is a hint: an entry and its ristretto slot, so a lookup
// compares the keys in its set's line and follows only the pointer of the
// key it seeks. Both are only a guess (they are stored one after the
// other): the entry's own key decides.
type hintSlot struct {
	key atomic.Uint64
	e   atomic.Pointer[entry]
}

type hintSet [hintWays]hintSlot

// find returns the entry hinted for slot k, or nil.
func (s *hintSet) find(k uint64) *entry {
	for i := range s {
		if s[i].key.Load() == k {
			if e := s[i].e.Load(); e != nil {
				return e
			}
		}
	}
	return nil
}

// put hints e for slot k: in the slot that hints k already, else in an
// empty one, else in one chosen at random.
func (s *hintSet) put(k uint64, e *entry) {
	h := &s[rand.Uint32()%hintWays]
	for i := range s {
		if s[i].key.Load() == k {
			h = &s[i]
			break
		}
		if s[i].e.Load() == nil {
			h = &s[i]
		}
	}
	h.e.Store(e)
	h.key.Store(k)
}

// drop clears every hint to e.
func (s *hintSet) drop(e *entry) {
	for i := range s {
		s[i].e.CompareAndSwap(e, nil)
	}
}

// hintSample: one hint hit in this many also looks the key up in
// ristretto, for its admission and eviction counters to see that the key
// is read (they see every miss and every other hit).
const hintSample = 8

// hint returns the set of the hint table for the key with ristretto slot
// k (a multiplicative hash: its high bits).
func (c *Cache) hint(k uint64) *hintSet {
	return &c.hints[(k*0x9e3779b97f4a7c15)>>c.hintShift]
}

// Get returns the value cached for (ns, pos), with a reference the caller
// must Release; nothing once closed.
//
// Most hits are served by the hint table: a direct-mapped array of the
// entries ristretto's index returned last, one per slot, so a hit is a
// load, a key compare and the reference (ristretto's lookup takes a
// shard lock, probes a map and queues the key for its admission counters:
// most of a hit's cost). A hint is only ever a guess: the value is taken
// with the ID the entry was made with, so a block evicted and reused for
// another value reads as a miss, and a value evicted but still held by a
// reader is still the verified bytes of its key. One hint hit in
// hintSample (chosen at random) also does ristretto's lookup, so its
// counters keep seeing the keys read most.
func (c *Cache) Get(ns Namespace, pos int64) (*Value, bool) {
	k := slot(ns, pos)
	h := c.hint(k)
	if e := h.find(k); e != nil && e.ns == ns && e.pos == pos && !c.closed.Load() && e.v.Acquire(e.id) {
		c.hits.add(k)
		if rand.Uint32()%hintSample == 0 {
			c.mu.RLock()
			if !c.closed.Load() {
				c.rc.Get(k)
			}
			c.mu.RUnlock()
		}
		return e.v, true
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return nil, false
	}
	e, ok := c.rc.Get(k)
	if !ok || e.ns != ns || e.pos != pos || !e.v.Acquire(e.id) {
		// A block evicted and reused since ristretto's index named it
		// holds another value: a miss.
		c.misses.add(k)
		return nil, false
	}
	h.put(k, e)
	if e.v.cachedID.Load() != e.id {
		// Ristretto let go of e since it returned it, maybe before the
		// put above, where its unhint would not have seen the hint.
		h.drop(e)
	}
	c.hits.add(k)
	return e.v, true
}

// unhint clears the hint to e, which ristretto let go of, so hints name
// only entries ristretto holds (or is letting go of now): a hint never
// keeps a value's descriptor, nor its slab's, alive on the heap.
func (c *Cache) unhint(e *entry) {
	if e != nil {
		c.hint(slot(e.ns, e.pos)).drop(e)
	}
}

// Alloc returns a value of n bytes (any n ≥ 0) for the caller to fill,
// holding one reference (the caller's). Its bytes are whatever its block
// held before; a pooled block starts at a BlockAlign-aligned address.
// Values of a closed cache work, but their blocks are not reused.
func (c *Cache) Alloc(n int) *Value {
	p := c.pools
	if free := p.bytes.Load(); free > 2*p.maxFree {
		// A reclaim that left free bytes (blocks its holders keep, free
		// blocks of the slabs the classes fill next) is not run again
		// until more are free: scanning every slab at every Alloc would
		// find the same. floor is the fewest bytes free seen since.
		if f := c.reclaimFloor.Load(); free < f {
			c.reclaimFloor.Store(free)
		} else if free > f+p.maxFree/4 {
			c.reclaim()
		}
	}
	return p.get(n)
}

// reclaim evicts the values left in the slabs with the most free blocks
// once more than twice MaxPooled bytes of blocks are free (the margin
// keeps it from running at every Alloc while a few slabs are held by
// readers), so that those slabs empty and are unmapped, down to MaxPooled
// (see pools.sparsest). It runs in Alloc, in the
// caller's goroutine (never in ristretto's, whose buffer a Del from there
// could wait on for ever), one call at a time; the others go on.
func (c *Cache) reclaim() {
	if !c.reclaiming.CompareAndSwap(false, true) {
		return
	}
	defer c.reclaiming.Store(false)
	// The Dels below drop the cache's references at once (a value no
	// reader holds is free when they return).
	defer func() { c.reclaimFloor.Store(c.pools.bytes.Load()) }()
	vals, ids := c.pools.sparsest(c.pools.excess())
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return
	}
	for i, v := range vals {
		if ids[i] == 0 {
			continue // not cached: its holder's Release frees it
		}
		k := v.key.Load()
		if e, ok := c.rc.Get(k); ok && e.v == v && e.id == ids[i] {
			c.rc.Del(k) // OnExit drops the cache's reference
			c.reclaimed.Add(1)
		}
	}
}

// Set offers v, filled and verified, for (ns, pos), any position; the
// admission policy may refuse it, and so does a slot held by another key.
// A value held for (ns, pos) is replaced only by a longer one (values of
// one key are bytes from the same file position: the longer holds the
// shorter). The cache takes a reference of its own (it never mutates v); the
// caller keeps its reference and releases it when done. Once closed, or
// if v was set before, it does nothing.
func (c *Cache) Set(ns Namespace, pos int64, v *Value) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed.Load() {
		return
	}
	cost := v.cost() + entryCost
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
	e := &entry{v: v, id: v.id, pos: pos, ns: ns}
	k := slot(ns, pos)
	v.key.Store(k)
	if old, ok := c.rc.Get(k); ok && old.ns == ns && old.pos == pos && old.v.Acquire(old.id) {
		// A shorter value held for the key: ristretto would apply a
		// longer one's cost as an update, without evicting anything, and
		// the cache would hold past its budget. Deleted first, the value
		// is a new key to ristretto, which admits it or not, and evicts
		// to make room.
		if old.v.n < v.n {
			c.rc.Del(k)
		}
		old.v.Release()
	}
	// Hinted before ristretto takes it up, so the first Get of a value
	// needs no lookup in ristretto either; a value ristretto refuses or
	// evicts is unhinted as it lets go of it (OnExit), which comes after
	// this put.
	h := c.hint(k)
	h.put(k, e)
	if !c.rc.Set(k, e, 0) {
		c.pending.Add(-cost)
		h.drop(e)
		e.drop() // dropped (a full buffer): ristretto never saw it
	}
}

// Wait blocks until every Set so far has been applied (for tests and
// benchmarks: Set is asynchronous).
func (c *Cache) Wait() {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.closed.Load() {
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
	if c.closed.Load() {
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
		Hits: c.hits.load(), Misses: c.misses.load(),
		Added: int64(m.KeysAdded()), Evicted: int64(m.KeysEvicted()),
		Refused: int64(m.SetsDropped()+m.SetsRejected()) + c.dropped.Load(),
		Bytes:   int64(m.CostAdded()) - int64(m.CostEvicted()), MaxBytes: c.maxBytes,
		Allocs: p.allocs.Load(), Reuses: p.reuses.Load(), Unmapped: p.unmapped.Load(),
		Pooled: free, MaxPooled: p.maxFree, Mapped: mapped, Reclaimed: c.reclaimed.Load(),
	}
}

// Close releases the cache's goroutines and memory. It waits for the Gets,
// Sets and Waits in progress; a second Close does nothing.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed.Load() {
		c.closed.Store(true)
		c.rc.Close() // drops the cache's references (OnExit)
		c.pools.close()
	}
}
