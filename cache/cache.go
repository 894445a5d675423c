// Package cache is segstore's user-space cache of verified frame bytes, on
// ristretto (TinyLFU admission, sampled LFU eviction), bounded by a budget
// in bytes that several logs can share.
//
// What is cached: the bytes of a frame whose checksum was verified when they
// came from the device. A hit is served without checking the checksum again
// (invariant 7: re-checking a 64 KiB frame per point read costs
// microseconds).
//
// Values live outside the Go heap (anonymous memory mappings), so the
// memory the cache holds is its budget: on the heap, evicted values are
// garbage until the next GC, and Go's default pacing let a 256 MiB cache
// hold 622 MB of RSS (measured). A Value is reference counted: the cache
// holds one reference, Get hands the caller another, and the mapping is
// unmapped when the last is released, so a reader's bytes are never freed
// or reused under it. Values are immutable once Set.
//
// Keys are (namespace, position). Each open segment file takes a fresh
// namespace from NewNamespace, so entries of a deleted or rewritten file can
// never be returned for another one; they age out under the budget.
package cache

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/ristretto/v2"
	"golang.org/x/sys/unix"
)

// Namespace identifies one file's entries. Zero is never handed out.
type Namespace uint32

// MaxPos is the largest position a key can hold: positions are stored in
// units of 8 bytes (frames are 8-byte aligned) in 32 bits.
const MaxPos = (1<<32 - 1) * 8

// Stats are the cache's counters since New.
type Stats struct {
	Hits, Misses int64
	Added        int64 // values admitted
	Evicted      int64 // values evicted to stay within the budget
	Refused      int64 // values the admission policy (or a full buffer) turned away
	Bytes        int64 // bytes held now: values plus ristretto's per-entry bookkeeping
	MaxBytes     int64
	// Mapped: bytes of values outside the Go heap now, cached or still
	// held by a reader after their eviction.
	Mapped int64
}

// HitRatio is Hits / (Hits + Misses), or 0.
func (s Stats) HitRatio() float64 {
	if s.Hits+s.Misses == 0 {
		return 0
	}
	return float64(s.Hits) / float64(s.Hits+s.Misses)
}

// Cache is safe for concurrent use.
type Cache struct {
	// mu: Get and Set hold it shared, Close exclusively: ristretto panics
	// on a Get or Set that overlaps its Close (a send on a closed channel).
	mu       sync.RWMutex
	closed   bool
	rc       *ristretto.Cache[uint64, *Value]
	maxBytes int64
	nextNS   atomic.Uint32
	mapped   atomic.Int64
}

// Value is one value's bytes, outside the Go heap, with a reference count.
type Value struct {
	refs atomic.Int64
	n    int
	r    *region
}

// region is a value's mapping. It is apart from the Value so that a
// cleanup can unmap it if a Value is dropped unreleased (a bug, but not a
// leak), and unmapping happens once whoever gets there first.
type region struct {
	mem    []byte
	freed  atomic.Bool
	mapped *atomic.Int64
}

func (r *region) free() {
	if r.freed.CompareAndSwap(false, true) {
		r.mapped.Add(-int64(len(r.mem)))
		_ = unix.Munmap(r.mem) // fails only for a bad address, which this is not
	}
}

// NewValue returns a value of n bytes to fill and Set, holding one
// reference (the caller's).
func (c *Cache) NewValue(n int) (*Value, error) {
	page := unix.Getpagesize()
	size := (max(n, 1) + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("cache: map %d bytes for a value: %w", size, err)
	}
	c.mapped.Add(int64(size))
	v := &Value{n: n, r: &region{mem: mem, mapped: &c.mapped}}
	v.refs.Store(1)
	runtime.AddCleanup(v, (*region).free, v.r)
	return v, nil
}

// Bytes are the value's bytes, valid until the holder's Release.
func (v *Value) Bytes() []byte { return v.r.mem[:v.n:v.n] }

// Release drops the holder's reference; the last one unmaps the bytes.
func (v *Value) Release() {
	if v.refs.Add(-1) == 0 {
		v.r.free()
	}
}

// acquire takes a reference unless the value is already released.
func (v *Value) acquire() bool {
	for {
		r := v.refs.Load()
		if r <= 0 {
			return false
		}
		if v.refs.CompareAndSwap(r, r+1) {
			return true
		}
	}
}

// ErrTooSmall: the budget cannot hold anything useful.
var ErrTooSmall = errors.New("cache: budget must be at least 64 KiB")

// New returns a cache holding at most maxBytes of values (plus ristretto's
// per-entry bookkeeping, which counts against the budget too).
func New(maxBytes int64) (*Cache, error) {
	if maxBytes < 64<<10 {
		return nil, fmt.Errorf("%w (got %d)", ErrTooSmall, maxBytes)
	}
	// ristretto advises 10 counters per expected entry; entries are frames
	// of ~4 KiB and more.
	rc, err := ristretto.NewCache(&ristretto.Config[uint64, *Value]{
		NumCounters: max(maxBytes/4096*10, 1000),
		MaxCost:     maxBytes,
		BufferItems: 64,
		Metrics:     true, // sharded atomic counters: the source of Stats
		// A value for a key is the same verified bytes whoever sets it.
		ShouldUpdate: func(cur, prev *Value) bool { return false },
		// Evicted, refused, replaced or cleared: the cache's reference goes.
		OnExit: func(v *Value) {
			if v != nil {
				v.Release()
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	return &Cache{rc: rc, maxBytes: maxBytes}, nil
}

// NewNamespace returns a namespace no other caller has.
func (c *Cache) NewNamespace() Namespace {
	for {
		if ns := Namespace(c.nextNS.Add(1)); ns != 0 {
			return ns
		}
	}
}

func key(ns Namespace, pos int64) uint64 { return uint64(ns)<<32 | uint64(pos/8) }

// Get returns the value cached for (ns, pos) with a reference the caller
// must Release.
func (c *Cache) Get(ns Namespace, pos int64) (*Value, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, false
	}
	v, ok := c.rc.Get(key(ns, pos))
	if !ok || !v.acquire() { // evicted and released between the two
		return nil, false
	}
	return v, true
}

// Set offers a verified value, which must not change from now on; the
// cache takes its own reference (the caller keeps and releases its own).
// The admission policy may refuse it. pos must be a multiple of 8 and at
// most MaxPos. The value's cost is its mapping's size.
func (c *Cache) Set(ns Namespace, pos int64, v *Value) {
	if pos < 0 || pos > MaxPos || pos%8 != 0 {
		panic(fmt.Sprintf("cache: position %d is not a multiple of 8 in [0, %d]", pos, int64(MaxPos)))
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	v.refs.Add(1)
	if !c.rc.Set(key(ns, pos), v, int64(len(v.r.mem))) {
		v.Release() // dropped before the policy saw it: no OnExit
	}
}

// Wait blocks until every Set so far has been applied (for tests and
// benchmarks: Set is asynchronous).
func (c *Cache) Wait() { c.rc.Wait() }

// Stats returns the counters.
func (c *Cache) Stats() Stats {
	m := c.rc.Metrics
	return Stats{
		Hits: int64(m.Hits()), Misses: int64(m.Misses()),
		Added: int64(m.KeysAdded()), Evicted: int64(m.KeysEvicted()),
		Refused: int64(m.SetsDropped() + m.SetsRejected()),
		Bytes:   int64(m.CostAdded()) - int64(m.CostEvicted()), MaxBytes: c.maxBytes,
		Mapped: c.mapped.Load(),
	}
}

// Close releases the cache's goroutines and its references on the values
// (each is unmapped now, or when its last reader releases it).
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.rc.Close()
}
