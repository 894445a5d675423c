// Package cache is segstore's user-space cache of verified frame bytes, on
// ristretto (TinyLFU admission, sampled LFU eviction), bounded by a budget
// in bytes that several logs can share.
//
// What is cached: the bytes of a frame whose checksum was verified when they
// came from the device. A hit is served without checking the checksum again
// (invariant 7: re-checking a 64 KiB frame per point read costs
// microseconds). Values are immutable: the cache never reuses a buffer, so a
// reader may keep a slice it got from Get for as long as it likes. The cost
// of a value is the heap memory it occupies, and the cache starts a
// collection per eighth of its budget offered, so that its garbage stays
// small (see Cache).
//
// Keys are (namespace, position), any position a file can have. Each open
// segment file takes a fresh namespace from NewNamespace, so entries of a
// deleted or rewritten file can never be returned for another one; they age
// out under the budget.
package cache

import (
	"errors"
	"fmt"
	"runtime/debug"
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
	Refused      int64 // values the admission policy (or a full buffer) turned away
	Bytes        int64 // bytes held now: values plus ristretto's per-entry bookkeeping
	MaxBytes     int64
	Collections  int64 // garbage collections the cache started (one per MaxBytes/8 evicted)
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

	// Evicted values are garbage until Go's next collection, and its
	// default pacing (GOGC=100) only collects when the heap has doubled
	// since the last one: a 256 MiB cache churning through a large log
	// held 622 MB of RSS (measured). So after every gcEvery bytes evicted
	// the cache starts a collection itself (one at a time, in the
	// background), bounding its garbage to about gcEvery.
	gcEvery   int64
	offered   atomic.Int64 // bytes Set since the last collection started
	collected atomic.Int64 // collections started
	gcRunning atomic.Bool
}

// gcFraction: a collection per this fraction of the budget evicted.
const gcFraction = 8

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

// New returns a cache holding at most maxBytes of values (plus ristretto's
// per-entry bookkeeping, which counts against the budget too); maxBytes is
// at least 64 KiB and at most MaxBytes.
func New(maxBytes int64) (*Cache, error) {
	if maxBytes < 64<<10 {
		return nil, fmt.Errorf("%w (got %d)", ErrTooSmall, maxBytes)
	}
	if maxBytes > MaxBytes {
		return nil, fmt.Errorf("%w (got %d)", ErrTooLarge, maxBytes)
	}
	// ristretto advises 10 counters per expected entry; entries are frames
	// of ~4 KiB and more.
	c := &Cache{maxBytes: maxBytes, gcEvery: maxBytes / gcFraction}
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, entry]{
		NumCounters: max(maxBytes/4096*10, 1000),
		MaxCost:     maxBytes,
		BufferItems: 64,
		Metrics:     true, // sharded atomic counters: the source of Stats
		// A value for a key is the same verified bytes whoever sets it (or,
		// for two keys that share a slot, the first one set keeps it).
		ShouldUpdate: func(cur, prev entry) bool { return false },
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	c.rc = rc
	return c, nil
}

// noteOffered counts bytes offered to the cache and starts a collection
// every gcEvery: each offered value either stays (while the cache fills)
// or, refused or later evicted, becomes garbage.
func (c *Cache) noteOffered(cost int64) {
	if c.offered.Add(cost) < c.gcEvery || !c.gcRunning.CompareAndSwap(false, true) {
		return
	}
	c.offered.Store(0)
	c.collected.Add(1)
	go func() {
		debug.FreeOSMemory()
		c.gcRunning.Store(false)
	}()
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
type entry struct {
	v   []byte
	pos int64
	ns  Namespace
}

// slot is the 64-bit ristretto key of (ns, pos): the namespace in the high
// 32 bits, the position in units of 8 bytes (frames are 8-byte aligned) in
// the low ones, so keys of positions below 32 GiB never share a slot within
// or across namespaces. Higher positions (and unaligned ones) may share a
// slot with another key; entry tells them apart.
func slot(ns Namespace, pos int64) uint64 { return uint64(ns)<<32 ^ uint64(pos)>>3 }

// Get returns the value cached for (ns, pos); nothing once closed.
func (c *Cache) Get(ns Namespace, pos int64) ([]byte, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, false
	}
	e, ok := c.rc.Get(slot(ns, pos))
	if !ok || e.ns != ns || e.pos != pos {
		return nil, false
	}
	return e.v, true
}

// Set offers a verified, immutable value for (ns, pos), any position; the
// admission policy may refuse it, and so does a slot held by another key.
// Once closed it does nothing.
func (c *Cache) Set(ns Namespace, pos int64, v []byte) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	cost := heapSize(cap(v))
	c.rc.Set(slot(ns, pos), entry{v: v, pos: pos, ns: ns}, cost)
	c.noteOffered(cost)
}

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

// Wait blocks until every Set so far has been applied (for tests and
// benchmarks: Set is asynchronous).
func (c *Cache) Wait() {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if !c.closed {
		c.rc.Wait()
	}
}

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	m := c.rc.Metrics
	return Stats{
		Hits: int64(m.Hits()), Misses: int64(m.Misses()),
		Added: int64(m.KeysAdded()), Evicted: int64(m.KeysEvicted()),
		Refused: int64(m.SetsDropped() + m.SetsRejected()),
		Bytes:   int64(m.CostAdded()) - int64(m.CostEvicted()), MaxBytes: c.maxBytes,
		Collections: c.collected.Load(),
	}
}

// Close releases the cache's goroutines and memory. It waits for the Gets,
// Sets and Waits in progress; a second Close does nothing.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed {
		c.closed = true
		c.rc.Close()
	}
}
