package engine

import (
	"encoding/binary"
	"fmt"
	"sort"
	"sync/atomic"

	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/wal"
)

// A sealed segment of version 3 keeps in memory only its footer's summary
// (the trailer's facts and each index block's first offset and time: 16
// bytes per 127 entries, about 2 KiB for a full 64 MiB segment), never its
// entries. A lookup finds the block of an offset (or a time) in the
// summary, takes the block through the log's cache under the segment's
// namespace at the block's file position (past the data end, so no chunk
// of records shares the key) and searches its encoded entries in place.
// A block read from the device is checked before it is cached and used:
// its checksum, its head, its agreement with the summary and the order and
// range of its entries (layout.Summary.CheckBlock, the check a whole
// footer's blocks get). The active segment, and segments of older versions
// or whose footer was found damaged (served from an index rebuilt from the
// records), keep their index in memory.

// keepSummary makes s, just sealed with footer f, keep only f's summary,
// dropping its index from memory. The caller holds s.mu.
func (s *segment) keepSummary(f *wal.Footer) {
	if !s.recordIndexed() {
		return
	}
	sum, err := layout.DecodeSummary(f.Data, len(f.Data), s.hdr.SegmentID, s.base, f.Next, f.Pos)
	if err != nil {
		return // cannot be (the seal encoded it): the index stays in memory
	}
	// s.interval stays (a thinned footer's wider interval only makes
	// point reads' walks read on).
	s.index = nil
	s.sum.Store(sum)
}

// indexBlock is a checked index block: its 4096 encoded bytes.
type indexBlock []byte

func (b indexBlock) count() int { return int(binary.LittleEndian.Uint32(b[layout.BlockCountAt:])) }

func (b indexBlock) entry(j int, base uint64) indexEntry {
	return fromLayoutEntry(layout.DecodeEntry(b[indexBlockHead+j*indexEntryLen:], base))
}

// field is entry j's uint64 (width 8) or uint32 (width 4) at byte at.
func (b indexBlock) field(j, at, width int) uint64 {
	p := b[indexBlockHead+j*indexEntryLen+at:]
	if width == 4 {
		return uint64(binary.LittleEndian.Uint32(p))
	}
	return binary.LittleEndian.Uint64(p)
}

// find returns the block's entry for off (the last at or before it; the
// first if none is) and where off's record ends at the latest: the next
// entry's position, or the block's next position.
func (b indexBlock) find(base, off uint64) (indexEntry, int64) {
	n, rel := b.count(), off-base
	lo, hi := 0, n // the entry sought is in [lo, hi): the first's offset is at most off
	if n > 1 {
		// Records of about one size put the entries at about even steps
		// of offsets: a first guess between the first and the last entry
		// is mostly the entry or its neighbour, two or three of the
		// block's cache lines where a binary search touches five or six.
		// Only an offset below the first entry's settles on the first
		// without a look at the next one: entries of equal offsets (never
		// in a checked block) resolve to the last of them, as the binary
		// search does.
		switch first, last := b.field(0, layout.EntryRel, 4), b.field(n-1, layout.EntryRel, 4); {
		case rel < first:
			hi = 1
		case rel >= last:
			lo = n - 1
		default:
			g := int((rel - first) * uint64(n-1) / (last - first)) // at most n-2
			if b.field(g, layout.EntryRel, 4) > rel {
				hi = g
			} else if lo = g; b.field(g+1, layout.EntryRel, 4) > rel {
				hi = g + 1
			}
		}
	}
	for hi-lo > 1 {
		if m := int(uint(lo+hi) >> 1); b.field(m, layout.EntryRel, 4) > rel {
			hi = m
		} else {
			lo = m
		}
	}
	j := lo
	end := int64(binary.LittleEndian.Uint64(b[layout.BlockNextAt:]))
	if j+1 < n {
		end = int64(b.field(j+1, layout.EntryPos, 8))
	}
	return b.entry(j, base), end
}

// before returns the block's last entry whose time is before ts (the
// first if none is).
func (b indexBlock) before(base uint64, ts int64) indexEntry {
	j := sort.Search(b.count(), func(j int) bool { return int64(b.field(j, layout.EntryTime, 8)) >= ts }) - 1
	return b.entry(max(j, 0), base)
}

// inMemory calls use, under s.mu, if s's index is in memory, and returns
// nil; otherwise it returns the footer summary s keeps instead.
func (s *segment) inMemory(use func()) *footerSummary {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if sum := s.sum.Load(); sum != nil {
		return sum
	}
	use()
	return nil
}

// blockOf is the index block of the footer sum describes that holds off's
// entry.
func blockOf(sum *footerSummary, off uint64) int {
	return max(sort.Search(len(sum.First), func(k int) bool { return sum.First[k].Off > off })-1, 0)
}

// lookup finds off's index entry in s (see segment.lookupLocked): in the
// index in memory, or for a sealed segment that keeps only its footer's
// summary, in the index block that holds it.
//
// This is on the path of every cache hit, so the summary is taken without
// the lock when it is set (it is cleared only by unload, which waits for
// every reader to let go of s), and the block is searched in the cache's
// value, with no copy and no closure.
func (l *Log) lookup(s *segment, off uint64, vis position) (e indexEntry, end int64, complete bool, err error) {
	sum := s.sum.Load()
	if sum == nil {
		if sum = s.inMemory(func() { e, end, complete = s.lookupLocked(off, vis) }); sum == nil {
			return e, end, complete, nil
		}
	}
	v, err := l.indexBlock(s, sum, blockOf(sum, off))
	if err != nil {
		return e, 0, false, err
	}
	e, end = indexBlock(v.Bytes()).find(s.base, off)
	v.Release()
	return e, end, true, nil
}

// runEnd is where a read-ahead read of s from file position from (the
// record of offset next) ends: see segment.runEndLocked. In a segment that
// keeps only its summary it walks the blocks from next's on (two or three
// for a 1 MiB span at a 4 KiB interval); a block that cannot be read ends
// the run at the visible end, and the point read that meets it reports it.
func (l *Log) runEnd(s *segment, next uint64, from, span int64, vis position) (end int64, at indexEntry, entry bool) {
	sum := s.inMemory(func() { end, at, entry = s.runEndLocked(from, span, vis) })
	if sum == nil {
		return end, at, entry
	}
	to := min(from+span, vis.pos)
	if to == vis.pos {
		return vis.pos, indexEntry{}, false
	}
	var last, past indexEntry
	found, over := false, false
	for k := blockOf(sum, next); k < len(sum.First) && !over; k++ {
		b, v, err := l.indexBlockAhead(s, sum, k)
		if err != nil {
			return vis.pos, indexEntry{}, false
		}
		for j := 0; j < b.count() && !over; j++ {
			switch e := b.entry(j, s.base); {
			case e.pos > to:
				past, over = e, true
			case e.pos > from:
				last, found = e, true
			}
		}
		v.Release()
	}
	switch {
	case found:
		return last.pos, last, true
	case over && past.pos < vis.pos:
		return past.pos, past, true
	}
	return vis.pos, indexEntry{}, false
}

// entriesIn returns a copy of s's index entries of offsets first to next,
// both included, and one for the end if next is the end of a sealed s:
// see segment.entriesInLocked. It returns none if a block cannot be read
// (read-ahead then caches no intervals of its chunk).
func (l *Log) entriesIn(s *segment, first, next uint64) (es []indexEntry) {
	sum := s.inMemory(func() { es = s.entriesInLocked(first, next) })
	if sum == nil {
		return es
	}
	for k := blockOf(sum, first); k < len(sum.First) && sum.First[k].Off <= next; k++ {
		b, v, err := l.indexBlockAhead(s, sum, k)
		if err != nil {
			return nil
		}
		for j := range b.count() {
			if e := b.entry(j, s.base); e.off >= first && e.off <= next {
				es = append(es, e)
			}
		}
		v.Release()
	}
	if vis := s.vis(); next == vis.off {
		es = append(es, indexEntry{off: next, pos: vis.pos})
	}
	return es
}

// entryBefore is s's last index entry whose time is before ts (the first
// entry if none is). s is loaded.
func (l *Log) entryBefore(s *segment, ts int64) (e indexEntry, err error) {
	sum := s.inMemory(func() {
		j := sort.Search(len(s.index), func(j int) bool { return s.index[j].time >= ts }) - 1
		e = s.index[max(j, 0)]
	})
	if sum == nil {
		return e, nil
	}
	k := max(sort.Search(len(sum.First), func(k int) bool { return sum.First[k].Time >= ts })-1, 0)
	v, err := l.indexBlock(s, sum, k)
	if err != nil {
		return e, err
	}
	e = indexBlock(v.Bytes()).before(s.base, ts)
	v.Release()
	return e, nil
}

// indexHints is a direct-mapped table of the index blocks read last (256
// slots, a pointer each: no memory of their own), in front of the cache:
// a lookup whose block is named by its slot takes it with one reference
// (Value.Acquire with the ID it had, which fails once the cache let go of
// the block and it was reused) and skips the cache's lookup, the second
// one of a hit. One use in 16 of a hint also asks the cache, so its
// admission policy still sees that the block is used.
type indexHints [256]atomic.Pointer[indexHint]

type indexHint struct {
	v    *cache.Value
	id   uint64
	ns   cache.Namespace
	at   int64
	uses atomic.Uint32
}

func (h *indexHints) slot(ns cache.Namespace, at int64) *atomic.Pointer[indexHint] {
	return &h[(uint64(ns)<<32^uint64(at)>>12)*0x9e3779b97f4a7c15>>56]
}

// indexBlock returns index block k of s's footer (described by sum), in
// a cache value the caller must release: through its hint, from the
// cache, or read from the device, checked and offered to the cache. A
// block that fails its checks is corruption, reported with the block's
// position.
func (l *Log) indexBlock(s *segment, sum *footerSummary, k int) (*cache.Value, error) {
	at := sum.BlocksAt + int64(k*indexBlockLen)
	slot := l.indexHints.slot(s.ns, at)
	h := slot.Load()
	ours := h != nil && h.ns == s.ns && h.at == at
	if ours && h.uses.Add(1)%16 != 0 {
		if h.v.Acquire(h.id) {
			return h.v, nil
		}
		ours = false // the cache let go of it: a new hint below
	}
	if v, ok := l.cache.Get(s.ns, at); ok {
		l.indexHits.Add(1)
		if h == nil || (h.ns == s.ns && h.at == at && !ours) {
			// An empty slot, or a stale hint of this block. A slot that
			// names another block keeps it (no garbage per hit); the next
			// read from the device takes it.
			slot.Store(&indexHint{v: v, id: v.ID(), ns: s.ns, at: at})
		}
		return v, nil
	}
	l.indexMisses.Add(1)
	var buf []byte
	if s.dev.Alignment().Memory <= poolAlign {
		buf = l.readPool.Get() // at least 64 KiB
		defer l.readPool.Put(buf)
	}
	_, got, err := s.readAt(at, at+indexBlockLen, buf)
	if err != nil {
		return nil, err
	}
	l.readDeviceBytes.Add(int64(len(got)))
	l.indexReadBytes.Add(int64(len(got)))
	if err := checkIndexBlock(s, sum, k, at, got); err != nil {
		return nil, err
	}
	v := l.cache.Alloc(indexBlockLen)
	copy(v.Bytes(), got)
	l.cache.Set(s.ns, at, v)
	slot.Store(&indexHint{v: v, id: v.ID(), ns: s.ns, at: at})
	return v, nil
}

// checkIndexBlock checks b, read from file position at for index block k
// of s's footer (described by sum; shorter than a block if the file ended
// there), and returns the damage it finds as a CorruptionError that says
// where and what to do.
func checkIndexBlock(s *segment, sum *footerSummary, k int, at int64, b []byte) error {
	var err error
	if len(b) < indexBlockLen {
		err = fmt.Errorf("the file ends at byte %d, inside the block", at+int64(len(b)))
	} else {
		_, err = sum.CheckBlock(b[:indexBlockLen], k, s.hdr.SegmentID, s.base, s.vis().off, nil)
	}
	if err != nil {
		return s.corrupt("read", at, fmt.Errorf("index block %d of the footer (offsets from %d): %w; the records are intact: reopen the log, whose open rebuilds the index from them, or run segtool verify", k, sum.First[k].Off, err))
	}
	return nil
}

// raIndexBlocks is how many index blocks read-ahead reads at once when the
// block it needs is neither cached nor in a run it read: 64 KiB, the
// entries of 8 MiB of records at the default 4 KiB interval. Read one at
// a time, and refused by a full cache, the blocks were a synchronous 4 KiB
// read before every other 1 MiB chunk of a sequential scan (two thirds of
// the device's rate, measured).
const raIndexBlocks = 16

// indexRuns are the runs of index blocks read-ahead read last, in
// raStreams slots taken round robin by every run read (not one per
// stream: a stream that reads runs faster than the others takes their
// slots), held outside the cache: raStreams × raIndexBlocks × 4 KiB
// (256 KiB) at most.
type indexRuns struct {
	slots [raStreams]atomic.Pointer[indexRun]
	next  atomic.Uint32
}

// indexRun is index blocks [k, k+n) of a segment (namespace ns) whose
// blocks start at file position at, checked, in v (taken with id).
type indexRun struct {
	ns   cache.Namespace
	at   int64
	k, n int
	v    *cache.Value
	id   uint64
}

// indexBlockAhead is indexBlock for read-ahead, which reads the blocks
// that follow k next: block k from the cache, from a run of blocks read
// before, or from a new run of up to raIndexBlocks read with one device
// read (each block checked, and offered to the cache for point reads). It
// returns the block and the value holding it, which the caller releases.
// Only block k failing its check, or the read failing, is an error; the
// run ends before the first other block that fails (a read of it
// reports it).
func (l *Log) indexBlockAhead(s *segment, sum *footerSummary, k int) (indexBlock, *cache.Value, error) {
	at := sum.BlocksAt + int64(k*indexBlockLen)
	if v, ok := l.cache.Get(s.ns, at); ok {
		l.indexHits.Add(1)
		return indexBlock(v.Bytes()), v, nil
	}
	for i := range l.indexRuns.slots {
		r := l.indexRuns.slots[i].Load()
		if r != nil && r.ns == s.ns && r.at == sum.BlocksAt && k >= r.k && k < r.k+r.n && r.v.Acquire(r.id) {
			l.indexHits.Add(1)
			j := (k - r.k) * indexBlockLen
			return indexBlock(r.v.Bytes()[j : j+indexBlockLen]), r.v, nil
		}
	}
	n := min(raIndexBlocks, len(sum.First)-k)
	if n <= 1 {
		v, err := l.indexBlock(s, sum, k)
		if err != nil {
			return nil, nil, err
		}
		return indexBlock(v.Bytes()), v, nil
	}
	l.indexMisses.Add(1)
	v := l.cache.Alloc(n * indexBlockLen)
	var buf []byte
	if s.dev.Alignment().Memory <= cache.BlockAlign {
		buf = v.Bytes() // read in place
	}
	_, got, err := s.readAt(at, at+int64(n*indexBlockLen), buf)
	if err != nil {
		v.Release()
		return nil, nil, err
	}
	l.readDeviceBytes.Add(int64(len(got)))
	l.indexReadBytes.Add(int64(len(got)))
	good := 0
	for j := range n {
		bat := at + int64(j*indexBlockLen)
		b := got[min(j*indexBlockLen, len(got)):]
		if err := checkIndexBlock(s, sum, k+j, bat, b); err != nil {
			if j == 0 {
				v.Release()
				return nil, nil, err
			}
			break
		}
		b = b[:indexBlockLen]
		if buf == nil {
			copy(v.Bytes()[j*indexBlockLen:], b)
		}
		// A copy of its own in the cache (4 KiB of index per 512 KiB of
		// records at the default interval), so that point reads after the
		// scan find the block when the run is gone.
		bv := l.cache.Alloc(indexBlockLen)
		copy(bv.Bytes(), b)
		l.cache.Set(s.ns, bat, bv)
		bv.Release()
		good++
	}
	if v.Acquire(v.ID()) { // the slot's reference
		r := &indexRun{ns: s.ns, at: sum.BlocksAt, k: k, n: good, v: v, id: v.ID()}
		slot := &l.indexRuns.slots[l.indexRuns.next.Add(1)%raStreams]
		if old := slot.Swap(r); old != nil {
			old.v.Release()
		}
		if l.closed() { // Close let go of the runs before this one was kept
			l.indexRuns.drop()
		}
	}
	return indexBlock(v.Bytes()[:indexBlockLen]), v, nil
}

// drop lets go of every run (at Close).
func (rs *indexRuns) drop() {
	for i := range rs.slots {
		if old := rs.slots[i].Swap(nil); old != nil {
			old.v.Release()
		}
	}
}
