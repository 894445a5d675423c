package engine

import (
	"encoding/binary"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/segstore/segstore/cache"
)

// fresh holds the batches appended last, as the appenders gave them, so
// that reading what was just appended (raft's GetLog of what StoreLogs
// stored, a follower tailing its leader) costs no device read: a
// write-through cache of the newest records, as Redpanda's batch cache.
//
// It is bounded to maxBytes (freshBytes, or an eighth of the cache's
// budget) of the memory its batches occupy: their blocks from the cache's
// pool (outside the Go heap, not counted in the cache's budget), whole,
// and their descriptors, so that batches of tiny records, each in a block
// of at least 512 bytes, hold no more than larger ones; the oldest batches
// go first. Entries are
// keyed by the segment's cache namespace as well as by offset, so a
// segment rewritten by TruncateBack (which gets a new namespace) never
// shows a record of its old contents; TruncateBack also drops them all,
// since offsets cut can be appended again.
//
// A batch is inserted by Append once the writer has taken it, before
// Append returns, under the log's lock held shared (so no truncation runs
// in between). Readers consult it only for an offset below the segment's
// visible end, so a record is never shown before it is durable, and the
// bytes are those the checksum was computed over.
type fresh struct {
	mu       sync.RWMutex
	batches  []freshBatch // ascending by first offset; guarded by mu
	bytes    int          // memory the batches occupy (their values' Size); guarded by mu
	maxBytes int
	hits     atomic.Int64 // reads served
	// lo and hi bound the offsets the batches hold, [lo, hi) (any
	// namespace), stored under mu held exclusively: a read outside them
	// (most reads of a log bigger than the bound) takes no lock. lo is
	// the first batch's first offset (the batches are sorted); hi the
	// highest end added since the last release, which may lie past what
	// is still held (a read there takes the lock and finds nothing). A
	// read that races an add may miss the batch added and read the record
	// elsewhere, as it would have a moment earlier.
	lo, hi atomic.Uint64
	// aside is the record bytes being copied beside an Append's write
	// (Log.copyForFresh), at most maxBytes: each such copy is held while
	// its appender waits for the writer.
	aside atomic.Int64
}

// takeAside reserves n bytes of the copies made beside a write, and
// reports whether it could (never if f is nil or n is more than the bound).
// The caller gives them back by adding -n to aside once its copy is done.
func (f *fresh) takeAside(n int) bool {
	if f == nil || n > f.maxBytes {
		return false
	}
	for {
		cur := f.aside.Load()
		if cur+int64(n) > int64(f.maxBytes) {
			return false
		}
		if f.aside.CompareAndSwap(cur, cur+int64(n)) {
			return true
		}
	}
}

// freshBatch is one appended batch: its records' bytes, then their end
// positions (uint32 each), in one cache value.
type freshBatch struct {
	ns    cache.Namespace
	first uint64
	count int
	size  int // v.Size(): what the batch counts against maxBytes
	v     *cache.Value
}

// freshBytes: the write-through cache holds at most this many bytes, or
// an eighth of the cache's budget if that is less.
const freshBytes = 4 << 20

func newFresh(budget int64) *fresh {
	return &fresh{maxBytes: int(min(freshBytes, budget/8))}
}

// add keeps a copy of records, the batch appended at first in the segment
// of namespace ns. A batch larger than the whole bound is not kept.
func (f *fresh) add(c *cache.Cache, ns cache.Namespace, first uint64, records [][]byte) {
	f.insert(ns, first, len(records), f.copyOf(c, records))
}

// copyOf copies records into one value laid out as fresh keeps a batch
// (nil if f is nil or the batch, in its block, is larger than the whole
// bound).
func (f *fresh) copyOf(c *cache.Cache, records [][]byte) *cache.Value {
	if f == nil || len(records) == 0 {
		return nil
	}
	n := 4 * len(records)
	for _, r := range records {
		n += len(r)
	}
	if n > f.maxBytes {
		return nil
	}
	v := c.Alloc(n)
	if v.Size() > int64(f.maxBytes) {
		// Its block (rounded up to the pool's class) is more than the
		// bound: kept, it would drop every batch held, itself too. Not
		// copied either.
		v.Release()
		return nil
	}
	b := v.Bytes()
	table := n - 4*len(records)
	p := 0
	for i, r := range records {
		p += copy(b[p:], r)
		binary.LittleEndian.PutUint32(b[table+4*i:], uint32(p))
	}
	return v
}

// insert keeps v, a copy of the count records appended at first in the
// segment of namespace ns (made by copyOf; nil keeps nothing).
func (f *fresh) insert(ns cache.Namespace, first uint64, count int, v *cache.Value) {
	if v == nil {
		return
	}
	size := int(v.Size())
	f.mu.Lock()
	defer f.mu.Unlock()
	// Batches come in the order their appenders got here, which is not
	// always offset order; lookups search by offset, so keep them sorted
	// by inserting in place (almost always at the end).
	i := len(f.batches)
	for i > 0 && f.batches[i-1].first > first {
		i--
	}
	f.batches = append(f.batches, freshBatch{})
	copy(f.batches[i+1:], f.batches[i:])
	f.batches[i] = freshBatch{ns: ns, first: first, count: count, size: size, v: v}
	f.bytes += size
	drop := 0
	for f.bytes > f.maxBytes {
		f.bytes -= f.batches[drop].size
		f.batches[drop].v.Release()
		drop++
	}
	// Dropped from the front by reslicing: the next append that outgrows
	// the array copies only the batches held, so an add costs O(1)
	// amortized however many small batches the bound holds (a copy of
	// them all at every add, and a scan of them all for the bounds, took
	// a third of the CPU of 16 appenders of one record each).
	clear(f.batches[:drop])
	f.batches = f.batches[drop:]
	if len(f.batches) == 0 { // the batch's block was larger than the bound
		f.lo.Store(0)
		f.hi.Store(0)
		return
	}
	f.hi.Store(max(f.hi.Load(), first+uint64(count)))
	f.lo.Store(f.batches[0].first)
}

// get appends the record at off of namespace ns to dst, if it is held.
func (f *fresh) get(ns cache.Namespace, off uint64, dst []byte) ([]byte, bool) {
	if f == nil || off < f.lo.Load() || off >= f.hi.Load() {
		return dst, false
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	i, ok := f.findLocked(ns, off)
	if !ok {
		return dst, false
	}
	bt := f.batches[i]
	b := bt.v.Bytes()
	k := int(off - bt.first)
	table := len(b) - 4*bt.count
	start := 0
	if k > 0 {
		start = int(binary.LittleEndian.Uint32(b[table+4*(k-1):]))
	}
	end := int(binary.LittleEndian.Uint32(b[table+4*k:]))
	f.hits.Add(1)
	return append(dst, b[start:end]...), true
}

// has reports whether the record at off of namespace ns is held.
func (f *fresh) has(ns cache.Namespace, off uint64) bool {
	if f == nil {
		return false
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	_, ok := f.findLocked(ns, off)
	return ok
}

// findLocked returns the index of the batch holding off of ns. The caller
// holds f.mu.
func (f *fresh) findLocked(ns cache.Namespace, off uint64) (int, bool) {
	bs := f.batches
	i := sort.Search(len(bs), func(i int) bool { return bs[i].first > off }) - 1
	return i, i >= 0 && off < bs[i].first+uint64(bs[i].count) && bs[i].ns == ns
}

// release lets go of every batch (Close, TruncateBack).
func (f *fresh) release() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.batches {
		b.v.Release()
	}
	f.batches, f.bytes = nil, 0
	f.lo.Store(0)
	f.hi.Store(0)
}
