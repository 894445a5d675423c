package engine

import (
	"io"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

// Sequential point reads (a raft leader replicating: GetLog(i),
// GetLog(i+1), …) are detected and read ahead, as the kernel does for
// buffered reads, into buffers of the log's own that the cache's admission
// policy cannot drop: ristretto refuses most new values under churn, and
// a chunk refused would be read again from the device for every record in
// it.
//
// A stream is a run of reads each one offset past the last. The log
// follows up to raStreams of them (so interleaved followers each keep
// theirs); a read that continues none replaces the stream used least
// recently. The third read of a run (found by the table of recent reads,
// whatever other reads come between, up to about 23) starts its
// read-ahead, whatever the cache's fill: raSpan bytes per read, ending
// at an index entry so that the read after it is planned (and started)
// before it is under way:
// raInflight reads are in flight at once, up to raDepth chunks ahead of
// the run. A read of the run that finds its record still being read ahead
// waits for that read instead of making a small one of its own. Each chunk
// read ahead is verified (each record's checksum) once, when it is read;
// the run's reads of it copy the record out, nothing else.
//
// Bound: a stream holds the chunk its last read used and at most raDepth
// chunks read ahead or in flight, and runs at most 2 × raInflight
// goroutines (reading, or copying what they read into the cache, each
// holding its buffer until done). Whatever the record sizes, the buffers
// of one stream (its chunks, its reads in flight, the copies into the
// cache still running) hold at most raStreamBytes (9 × (raSpan + 8 KiB),
// about 9 MiB): a read reserves its buffer's bytes before it reads, and
// one that does not fit is not made (a run of records longer than that
// is read by its point reads, on their own, and read-ahead goes on after
// it). So a log holds at most raStreams × raStreamBytes (about 36 MiB) of
// read-ahead outside the cache's budget, and raStreams × 2 × raInflight
// (16) goroutines; Close waits for them. A chunk is dropped
// only once the stream has read past its last record, or the stream is
// replaced: a block the next reads of the run will use is never dropped
// before they run.
const (
	raStreams  = 4
	raDepth    = 4       // chunks read ahead of the one in use
	raSpan     = 1 << 20 // bytes per read-ahead read (whole frames; wider for a frame that does not fit)
	raMinRun   = 3       // reads in a row that make a run
	raInflight = 2       // read-ahead reads under way at once, per stream
	// raStreamBytes bounds the buffers of one stream: its chunks and its
	// reads (each a pool buffer, raSpan + 8 KiB, for reads within the
	// span).
	raStreamBytes = (1 + raDepth + 2*raInflight) * (raSpan + 2*poolAlign)
	// raTotalBytes bounds the read-ahead buffers of a log.
	raTotalBytes = raStreams * raStreamBytes
)

// raHeld is bytes reserved for a read-ahead buffer, counted against its
// stream and the log until done.
type raHeld struct {
	ra *readAheads
	st *raStream
	n  int64
}

// reserve counts n bytes against st and the log, unless either bound
// would be passed: then it reports false and counts nothing.
// (Compare-and-swap, not add-then-undo: a counter never shows, even for
// a moment, more than its bound, so its peak is what was held.)
func (ra *readAheads) reserve(st *raStream, n int64) (*raHeld, bool) {
	if !addWithin(&st.held, &st.peak, n, raStreamBytes) {
		return nil, false
	}
	if !addWithin(&ra.held, &ra.peak, n, raTotalBytes) {
		st.held.Add(-n)
		return nil, false
	}
	return &raHeld{ra: ra, st: st, n: n}, true
}

// addWithin adds n to c unless that passes bound, and raises peak to the
// new value; it reports whether it added.
func addWithin(c, peak *atomic.Int64, n, bound int64) bool {
	for {
		cur := c.Load()
		if cur+n > bound {
			return false
		}
		if c.CompareAndSwap(cur, cur+n) {
			for p := peak.Load(); cur+n > p && !peak.CompareAndSwap(p, cur+n); p = peak.Load() {
			}
			return true
		}
	}
}

// shrink gives back what the reservation holds beyond n.
func (h *raHeld) shrink(n int64) {
	if h != nil && n < h.n {
		h.st.held.Add(n - h.n)
		h.ra.held.Add(n - h.n)
		h.n = n
	}
}

// done gives back the reservation (nil: none).
func (h *raHeld) done() { h.shrink(0) }

// raChunk is verified records of a segment holding the records [first,
// next) at file positions [pos, end): a chunk in a cache value (v, held by
// the stream), or, read ahead from a record-indexed segment, the records
// where they were read (run, in a buffer of the log's read-ahead pool):
// read-ahead does not copy them.
type raChunk struct {
	ns          cache.Namespace
	first, next uint64
	pos, end    int64
	left        uint32       // records of the last record's frame after end (0: end is a frame's start)
	v           *cache.Value // held by the stream, or nil
	run         recordRun    // if v is nil
	own         *raBuf       // holds run.buf, if v is nil
	carve       []indexEntry // the index entries to offer the cache its intervals by (cacheIntervals)
	held        *raHeld      // the bytes v counts against the bound (nil: v is not read-ahead's)
	ahead       bool         // read by read-ahead (a hit on it is a read-ahead hit)
	indexed     bool         // of a record-indexed segment (see readAheadNow)
}

// record returns the chunk's record of offset off (in [first, next)).
func (c *raChunk) record(off uint64) []byte {
	if c.v != nil {
		rec, _ := chunk(c.v.Bytes()).record(off - c.first)
		return rec
	}
	p, n := c.run.at(int(off - c.first))
	return c.run.raw[p : p+n]
}

// at returns where the run's record k starts in raw and how long it is.
func (r *recordRun) at(k int) (start, length int) {
	return int(r.table[2*k]), int(r.table[2*k+1])
}

// free lets go of the chunk's memory: its reference, or its buffer.
func (c *raChunk) free(pool *alignedbuf.Pool) {
	if c.v != nil {
		c.v.Release()
		c.held.done()
	} else {
		c.own.put(pool)
	}
}

// raBuf is a read-ahead buffer, shared by the stream's chunk and the copy
// of its intervals into the cache, which may still run once the stream
// has let go of the chunk.
type raBuf struct {
	b    []byte
	refs atomic.Int32
	held *raHeld // the bytes b counts against the bound
}

// put drops a reference; the last returns the buffer to pool (a buffer
// grown past the pool's size is dropped) and its bytes to the bound.
func (r *raBuf) put(pool *alignedbuf.Pool) {
	if r.refs.Add(-1) == 0 {
		pool.Put(r.b)
		r.held.done()
	}
}

// raPlan is where a stream's next read-ahead read starts: offset next, at
// file position pos of the segment of namespace ns (or the start of the
// next segment, if next is past it) with left records of its frame.
type raPlan struct {
	ns   cache.Namespace
	next uint64
	pos  int64
	left uint32
	ok   bool // planned; else the next read waits for the one under way (or for the run)
}

type raStream struct {
	next     uint64 // the offset the run reads next
	run      int    // 0: the stream is free
	used     uint64 // the reads' clock when last used
	chunks   []raChunk
	plan     raPlan   // where the next read-ahead read starts
	inflight int      // read-ahead reads under way (each its own goroutine)
	from     []uint64 // the offset each read under way starts at (inflight of them)
	running  int      // read-ahead goroutines (reading, or copying into the cache)
	skip     uint64   // no read-ahead starts before the run reaches it (what follows is cached)
	gen      uint64   // counts the runs the stream followed: a read of an older one is dropped
	// readingA: a read under way starts at or before next (it may bring
	// the run's next record), for the lock-free checks.
	readingA atomic.Bool
	// span is [lo, hi) of the offsets the stream's chunks hold and nextA
	// its next, for the lock-free checks of every read.
	lo, hi, nextA atomic.Uint64
	// held is the bytes of the stream's read-ahead buffers (at most
	// raStreamBytes), peak the most it held.
	held, peak atomic.Int64
}

// readAheads is the log's read-ahead state. Every point read consults it,
// so its checks are lock-free until a read is sequential or hits a held
// chunk: the table of recent reads and each stream's bounds are atomics.
type readAheads struct {
	mu      sync.Mutex
	streams [raStreams]raStream  // guarded by mu (but for the atomics)
	clock   uint64               // guarded by mu
	closed  bool                 // guarded by mu: no more read-ahead starts
	pool    *alignedbuf.Pool     // the read-ahead buffers (the log's raPool)
	recent  [raRecent]recentRead // recent[raRecentSlot(o)].off = o: a read of o-1 was made
	reads   atomic.Uint64        // point reads noted: their sequence numbers
	cond    sync.Cond            // on mu: a stream's chunks or reading changed (publish)
	wg      sync.WaitGroup       // read-ahead goroutines
	hits    atomic.Int64         // point reads served from a chunk read ahead
	waits   atomic.Int64         // times a point read waited for a read-ahead read
	bytes   atomic.Int64         // device bytes read ahead
	held    atomic.Int64         // bytes of the read-ahead buffers (at most raTotalBytes)
	peak    atomic.Int64         // the most held
}

// get appends to dst the record of offset off of namespace ns, if a
// stream holds it (copied under the lock: the stream may let go of its
// chunk as soon as it is released). A read that continues a run whose read-ahead is under way waits for it
// rather than reading the record itself: its read would be a small one,
// of bytes the read-ahead is reading anyway.
func (ra *readAheads) get(ns cache.Namespace, off uint64, dst []byte) ([]byte, bool) {
	held := false
	for i := range ra.streams {
		st := &ra.streams[i]
		held = held || (st.lo.Load() <= off && off < st.hi.Load()) || (st.nextA.Load() == off && st.readingA.Load())
	}
	if !held {
		return dst, false
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	for {
		waiting := false
		for i := range ra.streams {
			st := &ra.streams[i]
			for i := range st.chunks {
				if c := &st.chunks[i]; c.ns == ns && c.first <= off && off < c.next {
					if c.ahead {
						ra.hits.Add(1)
					}
					return append(dst, c.record(off)...), true
				}
			}
			waiting = waiting || (st.run > 0 && st.next == off && st.readingFor(off))
		}
		if !waiting || ra.closed {
			return dst, false
		}
		if ra.cond.L == nil {
			ra.cond.L = &ra.mu
		}
		ra.waits.Add(1)
		ra.cond.Wait() // woken by publish: a chunk added, or the read-ahead stopped
	}
}

// readingFor reports whether a read-ahead read under way starts at or
// before off, so it may bring off's record. One that starts past off (the
// stream skipped a run too long for its bound, left to the point reads,
// and reads on after it) never will: a reader of off does not wait for
// it. The caller holds ra.mu.
func (st *raStream) readingFor(off uint64) bool {
	for _, f := range st.from {
		if f <= off {
			return true
		}
	}
	return false
}

// noteRead records a point read of off in segment s, served by chunk c
// (c.v nil if it came from a stream; otherwise held by the caller, who
// keeps its reference): a read that continues a stream, or follows the
// read of the offset before it, takes the stream, which keeps c for its
// next reads, drops the chunks it has read past, and starts reading ahead
// once the run is long enough. Other reads cost a few atomics.
func (l *Log) noteRead(off uint64, c raChunk) {
	ra := &l.ra
	cont := false
	for i := range ra.streams {
		st := &ra.streams[i]
		cont = cont || st.nextA.Load() == off || (st.lo.Load() <= off && off < st.hi.Load())
	}
	// off-2 and off-1 were read, in that order: a run's third read (two
	// consecutive offsets are common among random reads of a few hot
	// records, and offsets read again in descending order are no run).
	now := ra.reads.Load()
	follows := false
	if off > 1 {
		r1, r2 := ra.readAt(off-1, now), ra.readAt(off-2, now)
		follows = r2 > 0 && r1 > r2
	}
	defer ra.noteRecent(off)
	if !cont && !follows {
		return
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if ra.closed {
		// Close let go of every chunk before this read, which passed its
		// closed check earlier, got here: a chunk kept now would be held
		// for good.
		return
	}
	ra.clock++
	st := ra.streamFor(off)
	switch {
	case st.run > 0 && st.next == off:
		st.run++
		st.next = off + 1
	case st.run > 0 && st.holds(off):
		// Inside what the stream holds: another reader of the run, or a
		// reread; the run goes on from where it is.
	case follows: // a new run: off follows the reads of off-2 and off-1
		st.release(ra.pool)
		st.run, st.next = raMinRun, off+1
	default:
		return
	}
	st.used = ra.clock
	// Keep what the stream has not read past, and c if nothing held has
	// off (the reader can be ahead of the read-ahead).
	held := st.holds(off)
	st.dropRead(ra.pool)
	if !held && c.v != nil && c.next > st.next && c.v.Acquire(c.v.ID()) {
		st.chunks = append(st.chunks, c)
	}
	ra.publish(st)
	if st.inflight == 0 && !st.plan.ok && st.next >= st.skip {
		// Read ahead from the end of the furthest chunk: the stream's, or
		// the one this read used (a chunk of one record, as a record as
		// long as an index interval makes, ends where the run reads next:
		// the stream need not keep it).
		if last, ok := st.furthest(c); ok && l.readAheadNow(last) {
			st.plan = raPlan{ns: last.ns, next: last.next, pos: last.end, left: last.left, ok: true}
		}
	}
	l.startReadAhead(st)
}

// startReadAhead starts the stream's planned read-ahead reads: at most
// raInflight at once, and at most raDepth chunks ahead of the run's
// position, counting those under way. The caller holds ra.mu.
func (l *Log) startReadAhead(st *raStream) {
	ra := &l.ra
	for !ra.closed && st.run > 0 && st.plan.ok && st.inflight < raInflight && st.running < 2*raInflight && st.ahead()+st.inflight < raDepth {
		p := st.plan
		st.plan.ok = false
		st.inflight++
		st.from = append(st.from, p.next)
		st.running++
		ra.wg.Add(1)
		go l.readAhead(st, p, st.gen)
	}
	ra.publish(st)
}

// readAheadNow reports whether a run whose furthest chunk is last reads
// ahead now. A run in a record-indexed segment always does: its read-ahead
// ends its reads at index entries and offers the cache every index
// interval it read whole while the cache has room (cacheIntervals), so a
// run that warms the cache for random reads later (every record read once,
// then random reads) leaves them there. In older segments read-ahead's
// chunks are not cached, so while the cache has room for what read-ahead
// would bring, the run's reads fill it instead.
func (l *Log) readAheadNow(last raChunk) bool {
	return last.indexed || l.cache.Room() < raDepth*raSpan
}

// noteRecent remembers that off was read, for the next read to find.
func (ra *readAheads) noteRecent(off uint64) {
	r := &ra.recent[raRecentSlot(off+1)]
	r.off.Store(off + 1)
	r.seq.Store(ra.reads.Add(1))
}

// readAt returns the number of the read of off if it was among the
// raWindow reads before the one numbered now, or 0.
func (ra *readAheads) readAt(off, now uint64) uint64 {
	r := &ra.recent[raRecentSlot(off+1)]
	if seq := r.seq.Load(); r.off.Load() == off+1 && now-seq < raWindow {
		return seq
	}
	return 0
}

// recentRead is a slot of the table of recent reads: the offset after the
// one read, and the read's sequence number. (The two are stored apart: a
// reader that sees a new offset with an old number only misses a run's
// start by one read, or starts one a read early.)
type recentRead struct{ off, seq atomic.Uint64 }

// The table of recent reads finds a run's third read: are the reads of
// offsets off-2 and off-1 among the last raWindow reads? It is direct-mapped by
// offset (raRecent slots), so a run is found whatever reads come between
// two of its own, up to about raWindow/2 of them (three of its reads fall
// within the window); the last raStreams reads alone
// were forgotten after four random reads, and a follower replicating
// among four clients reading at random got no read-ahead at all. The
// window is short on purpose: random reads of a few hot records (a Zipf
// distribution, newest hottest) meet consecutive offsets, and a false run
// reads a whole span ahead.
const (
	raRecent = 256
	raWindow = 48
)

func raRecentSlot(off uint64) uint64 { return off * 0x9e3779b97f4a7c15 >> 56 }

// holds reports whether a chunk of the stream holds off. The caller holds
// ra.mu.
func (st *raStream) holds(off uint64) bool {
	for _, c := range st.chunks {
		if c.first <= off && off < c.next {
			return true
		}
	}
	return false
}

// dropRead lets go of the chunks the stream has read past. The caller
// holds ra.mu.
func (st *raStream) dropRead(pool *alignedbuf.Pool) {
	kept := st.chunks[:0]
	for _, k := range st.chunks {
		if k.next <= st.next {
			k.free(pool)
			continue
		}
		kept = append(kept, k)
	}
	clear(st.chunks[len(kept):])
	st.chunks = kept
}

// furthest is the chunk holding the stream's last offsets, or c (if it
// has a value) if it reaches further: read-ahead goes on from its end. It
// reports false if there is neither.
func (st *raStream) furthest(c raChunk) (raChunk, bool) {
	f, ok := c, c.v != nil
	for _, k := range st.chunks {
		if !ok || k.next > f.next {
			f, ok = k, true
		}
	}
	return f, ok
}

// ahead counts the chunks wholly past the stream's read position.
func (st *raStream) ahead() int {
	n := 0
	for _, c := range st.chunks {
		if c.first >= st.next {
			n++
		}
	}
	return n
}

// publish stores the stream's bounds for the lock-free checks and wakes
// the reads waiting for its read-ahead. The caller holds ra.mu.
func (ra *readAheads) publish(st *raStream) {
	lo, hi := uint64(1), uint64(0) // empty
	if len(st.chunks) > 0 {
		lo, hi = st.chunks[0].first, st.chunks[0].next
		for _, c := range st.chunks[1:] {
			lo, hi = min(lo, c.first), max(hi, c.next)
		}
	}
	st.lo.Store(lo)
	st.hi.Store(hi)
	if st.run > 0 {
		st.nextA.Store(st.next)
	} else {
		st.nextA.Store(0)
	}
	st.readingA.Store(st.run > 0 && st.readingFor(st.next))
	ra.cond.Broadcast()
}

// streamFor returns the stream whose run off continues or whose chunks
// hold it, or else the one used least recently. The caller holds ra.mu.
func (ra *readAheads) streamFor(off uint64) *raStream {
	lru := &ra.streams[0]
	for i := range ra.streams {
		st := &ra.streams[i]
		if st.run > 0 && (st.next == off || st.holds(off)) {
			return st
		}
		if st.used < lru.used {
			lru = st
		}
	}
	return lru
}

// release lets go of the stream's chunks. The caller holds ra.mu.
func (st *raStream) release(pool *alignedbuf.Pool) {
	for _, c := range st.chunks {
		c.free(pool)
	}
	st.chunks = st.chunks[:0]
	st.plan.ok, st.skip = false, 0
	st.gen++
}

// readAhead reads the chunk planned at p for the stream's run gen and
// adds it to the stream. Once it knows where its read ends (an index
// entry), before it reads, it plans the next read and starts it: so two
// reads are in flight, which this machine's disk serves faster than one.
// Read-ahead stops at the durable end, at a segment that is still growing
// past it (its last interval is the tail's), at an error (the read that
// needs the records reports it), and when the stream moved elsewhere.
func (l *Log) readAhead(st *raStream, p raPlan, gen uint64) {
	ra := &l.ra
	defer ra.wg.Done()
	planned := false
	c, ok := l.readChunkAhead(st, p, func(next raPlan) {
		ra.mu.Lock()
		defer ra.mu.Unlock()
		if st.gen == gen {
			planned = true
			st.plan = next
			l.startReadAhead(st)
		}
	})
	ra.mu.Lock()
	st.inflight--
	if i := slices.Index(st.from, p.next); i >= 0 {
		st.from = slices.Delete(st.from, i, i+1)
	}
	// Still of use if the run has not read past it (a reader faster than
	// the device overtakes it); the chunks it covers go.
	valid := ok && !ra.closed && st.gen == gen && st.run > 0 && c.next > st.next
	if valid {
		kept := st.chunks[:0]
		for _, k := range st.chunks {
			if k.ns == c.ns && k.first >= c.first && k.next <= c.next {
				k.free(ra.pool)
				continue
			}
			kept = append(kept, k)
		}
		clear(st.chunks[len(kept):])
		st.chunks = append(kept, c)
		if !planned {
			st.plan = raPlan{ns: c.ns, next: c.next, pos: c.end, left: c.left, ok: true}
		}
	}
	carve := valid && len(c.carve) > 0
	if carve {
		c.own.refs.Add(1) // cacheIntervals' (the stream may let go of c meanwhile)
	}
	if ok && !valid {
		c.free(ra.pool)
	}
	if !ok && st.gen == gen {
		st.skip = c.next
	}
	l.startReadAhead(st)
	ra.mu.Unlock()
	if carve {
		// After the chunk is the stream's: its reads need not wait for
		// the copy.
		l.cacheIntervals(&c)
		c.own.put(ra.pool)
	}
	ra.mu.Lock()
	st.running--
	l.startReadAhead(st)
	ra.mu.Unlock()
}

// readChunkAhead reads the records from offset next on, at file position
// pos of the segment of namespace ns with left records of their frame
// (or, if next is past that segment, from the start of the segment holding
// next), verifies them and returns them as a chunk: whole frames in a
// segment of version 1 or 2, a run of records checked one by one
// (readRecordRun) in one of version 3.
//
// Each read first reserves its buffer's bytes against the stream's bound
// (reserve). One that can never fit (a record longer than the bound) is
// not made: the records up to its end are left to the run's point reads
// (the chunk returned names where that is) and the read after it is
// planned. One that does not fit now is not made either: the run's next
// read plans it again.
//
// The steps: raSegment (where the read starts), raServed (records served
// without a read ahead), then readRunAhead (version 3) or readFramesAhead
// (versions 1 and 2).
func (l *Log) readChunkAhead(st *raStream, p raPlan, plan func(raPlan)) (raChunk, bool) {
	s, pos, left, ok := l.raSegment(p)
	if !ok {
		return raChunk{}, false
	}
	defer s.done()
	vis := s.vis()
	if c, served := l.raServed(s, p.next); served {
		return c, false
	}
	if s.recordIndexed() {
		return l.readRunAhead(st, s, indexEntry{off: p.next, pos: pos, left: left}, vis, plan)
	}
	return l.readFramesAhead(st, s, p.next, pos, vis)
}

// raSegment finds the segment read-ahead plan p reads, with a reference
// on it (the caller lets go of it), and the file position and the records
// left of their frame where the read starts: p's, or the start of the
// next segment if p.next is past p's segment. ok is false if the log is
// closed, or p.next is in no segment (or not at the start of the next).
func (l *Log) raSegment(p raPlan) (s *segment, pos int64, left uint32, ok bool) {
	if l.closed() {
		return nil, 0, 0, false
	}
	s, err := l.segmentFor(p.next)
	if err != nil {
		return nil, 0, 0, false
	}
	if s.ns == p.ns {
		return s, p.pos, p.left, true
	}
	if s.base != p.next {
		s.done()
		return nil, 0, 0, false
	}
	return s, wal.DataStart, 0, true // the next segment
}

// raServed reports whether the records from next on in s are served
// without reading them ahead: appended last (from memory), or cached
// already, when the chunk returned says where the cached records end (the
// read-ahead waits for the run to pass it).
func (l *Log) raServed(s *segment, next uint64) (raChunk, bool) {
	if l.fresh.has(s.ns, next) {
		return raChunk{}, true
	}
	if end := l.cached(s, next); end > next {
		return raChunk{next: end}, true
	}
	return raChunk{}, false
}

// readRunAhead reads ahead in s, a segment of version 3, from index entry
// e (e.off the next offset): a run of records checked one by one
// (readRecordRun), up to the span of a read ahead or the index entry
// after it, which plan is given as the next read.
func (l *Log) readRunAhead(st *raStream, s *segment, e indexEntry, vis position, plan func(raPlan)) (raChunk, bool) {
	next, pos := e.off, e.pos
	end, at, entry := l.runEnd(s, next, pos, raSpan, vis)
	pooled := runRead(s, e, end, raSpan) <= int64(l.raPool.Size()) && s.dev.Alignment().Memory <= poolAlign
	need := l.runAheadNeed(s, pos, end, pooled)
	if need > raStreamBytes {
		skipTo := vis.off
		if entry {
			plan(raPlan{ns: s.ns, next: at.off, pos: at.pos, left: at.left, ok: true})
			skipTo = at.off
		}
		return raChunk{next: skipTo}, false
	}
	held, ok := l.ra.reserve(st, need)
	if !ok {
		return raChunk{}, false
	}
	if entry {
		plan(raPlan{ns: s.ns, next: at.off, pos: at.pos, left: at.left, ok: true})
	}
	var buf []byte
	if pooled {
		buf = l.raPool.Get()
	}
	run, read, err := l.readRecords(s, e, end, next, raSpan, buf)
	l.readDeviceBytes.Add(read)
	l.ra.bytes.Add(read)
	if err == nil && len(run.table) == 0 {
		err = io.EOF // nothing whole in the span: the durable end
	}
	if err != nil {
		l.raPool.Put(buf)
		held.done()
		return raChunk{}, false
	}
	if buf != nil && &run.buf[0] != &buf[0] {
		l.raPool.Put(buf) // a record longer than the span: read into a buffer of its own
	}
	held.shrink(int64(cap(run.buf)))
	c := raChunk{ns: s.ns, first: next, next: next + uint64(len(run.table)/2), pos: pos, end: pos + int64(len(run.raw)), left: run.left,
		run: run, own: &raBuf{b: run.buf, held: held}, ahead: true, indexed: true}
	c.own.refs.Store(1)
	if l.cache.Room() >= int64(len(run.raw)+4*len(run.table)) {
		c.carve = l.entriesIn(s, c.first, c.next)
	}
	return c, true
}

// runAheadNeed is the most a run read of s from pos to end holds, which it
// reserves against the stream's bound: the pool's buffer (if pooled), and
// a buffer of the whole run if it is longer (a record longer than the
// span).
func (l *Log) runAheadNeed(s *segment, pos, end int64, pooled bool) int64 {
	a := int64(s.dev.Alignment().Offset)
	need := alignedbuf.AlignUp(end, a) - alignedbuf.AlignDown(pos, a)
	if pooled {
		if need <= int64(l.raPool.Size()) {
			need = 0
		}
		need += int64(l.raPool.Size())
	}
	return need
}

// readFramesAhead reads ahead in s, a segment of version 1 or 2, whole
// frames from offset next at file position pos, over the span of a read
// ahead, or over one frame wider than that, read whole.
func (l *Log) readFramesAhead(st *raStream, s *segment, next uint64, pos int64, vis position) (raChunk, bool) {
	span := int64(raSpan)
	skipTo := uint64(0) // where a frame too wide to read ahead ends (0: unknown)
	for {
		to := min(pos+span, vis.pos)
		need, pooled := l.framesAheadNeed(s, pos, to)
		if need > raStreamBytes {
			return raChunk{next: skipTo}, false // left to the run's point reads
		}
		held, ok := l.ra.reserve(st, need)
		if !ok {
			return raChunk{}, false // the run's next read plans it again
		}
		var buf []byte
		if pooled {
			buf = l.raPool.Get()
		}
		raw, aligned, err := s.readRange(pos, to, buf)
		if err != nil {
			l.raPool.Put(buf)
			held.done()
			return raChunk{}, false
		}
		l.readDeviceBytes.Add(int64(len(aligned)))
		l.ra.bytes.Add(int64(len(aligned)))
		v, stop, err := buildChunk(raw, s.hdr, indexEntry{off: next, pos: pos}, l.cache.Alloc)
		wide := alignedbuf.AlignUp(int64(s.hdr.MaxWrite), 4096)
		if err == nil && stop == pos {
			wide, skipTo = wideFrame(raw, s, next, wide, skipTo)
		}
		l.raPool.Put(buf) // buildChunk copied what it keeps (a larger read allocated its own)
		if err != nil {
			held.done()
			return raChunk{}, false
		}
		if stop == pos {
			v.Release()
			held.done()
			if span < wide && to < vis.pos {
				span = wide
				continue
			}
			return raChunk{}, false
		}
		held.shrink(int64(cap(v.Bytes())))
		return raChunk{ns: s.ns, first: next, next: next + uint64(chunk(v.Bytes()).count()), pos: pos, end: stop, v: v, ahead: true, held: held}, true
	}
}

// framesAheadNeed is the most a frames read of s from pos to to holds,
// which it reserves against the stream's bound: the pool's buffer (if
// pooled: the device's memory alignment allows it), the read (if it is
// longer, into a buffer of its own) and the chunk built from it.
func (l *Log) framesAheadNeed(s *segment, pos, to int64) (need int64, pooled bool) {
	a := int64(s.dev.Alignment().Offset)
	rng := alignedbuf.AlignUp(to, a) - alignedbuf.AlignDown(pos, a)
	if s.dev.Alignment().Memory > poolAlign {
		return 2 * rng, false
	}
	need = int64(l.raPool.Size()) + rng
	if rng > int64(l.raPool.Size()) {
		need += rng
	}
	return need, true
}

// wideFrame is for a read of raw that held no whole frame at offset next:
// one frame wider than the span, to be read whole, as wide as its header
// says (no wider than wide, from MaxWrite; a header that lies only sizes
// that read, whose bytes are verified like any other). It returns the
// width to read and where the frame ends (skipTo, as given if the header
// does not decode or is not the frame at next).
func wideFrame(raw []byte, s *segment, next uint64, wide int64, skipTo uint64) (int64, uint64) {
	h, err := wal.DecodeFrameHeader(raw, int(s.hdr.MaxWrite))
	if err != nil || h.First != next {
		return wide, skipTo
	}
	return min(wide, alignedbuf.AlignUp(int64(wal.FrameSize(int(h.Length))), 4096)), next + uint64(h.Count)
}

// closeReadAhead stops read-ahead, waits for the goroutines and lets go
// of every chunk (Close).
func (l *Log) closeReadAhead() {
	ra := &l.ra
	ra.mu.Lock()
	ra.closed = true
	ra.mu.Unlock()
	ra.wg.Wait()
	ra.reset()
}

// reset lets go of every stream's chunks (TruncateBack: offsets cut can be
// appended again, under another namespace, but the memory is let go).
func (ra *readAheads) reset() {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	for i := range ra.streams {
		st := &ra.streams[i]
		st.release(ra.pool)
		st.run = 0
		ra.publish(st)
	}
}

// runEnd is where a read-ahead read of s from file position from ends:
// at the last index entry at most span bytes on, so the next read starts
// at an entry and every interval it reads is whole (cacheIntervals); at
// the visible end if that comes first; at the first entry past the span
// if none is within it (a record longer than the span). entry: it ends at
// the entry at. The caller holds s.mu (Log.runEnd).
func (s *segment) runEndLocked(from, span int64, vis position) (end int64, at indexEntry, entry bool) {
	to := min(from+span, vis.pos)
	i := sort.Search(len(s.index), func(i int) bool { return s.index[i].pos > to }) // the first entry past to
	switch {
	case to == vis.pos:
	case i > 0 && s.index[i-1].pos > from:
		return s.index[i-1].pos, s.index[i-1], true
	case i < len(s.index) && s.index[i].pos < vis.pos:
		return s.index[i].pos, s.index[i], true
	}
	return vis.pos, indexEntry{}, false
}

// entriesIn returns a copy of s's index entries of offsets first to
// next, both included, and, if next is the end of a sealed s, one for the
// end (its last interval ends there). The caller holds s.mu
// (Log.entriesIn).
func (s *segment) entriesInLocked(first, next uint64) []indexEntry {
	lo := sort.Search(len(s.index), func(i int) bool { return s.index[i].off >= first })
	hi := sort.Search(len(s.index), func(i int) bool { return s.index[i].off > next })
	es := append([]indexEntry(nil), s.index[lo:hi]...)
	if vis := s.vis(); s.sealed && next == vis.off {
		es = append(es, indexEntry{off: next, pos: vis.pos})
	}
	return es
}

// cached returns the end of the run of records from off of s that the
// cache holds (off if it holds none): a point read of them would not read
// the device.
func (l *Log) cached(s *segment, off uint64) uint64 {
	e, _, complete, err := l.lookup(s, off, s.vis())
	if err != nil || !complete {
		return off
	}
	v, ok := l.cache.Get(s.ns, e.pos)
	if !ok {
		return off
	}
	defer v.Release()
	if n := uint64(chunk(v.Bytes()).count()); e.off+n > off {
		return e.off + n
	}
	return off
}

// cacheIntervals offers the cache the index intervals that the read-ahead
// chunk c holds whole (between its carve entries), each as the chunk a
// point read of it would have cached (its records up to the next entry),
// copied from c: the records were verified when c was read. readChunkAhead
// gives c entries only while the cache has room for it.
func (l *Log) cacheIntervals(c *raChunk) {
	b, es := &c.run, c.carve
	var table []uint32
	for k := 0; k+1 < len(es); k++ {
		a, z := es[k], es[k+1] // the interval [a.off, z.off)
		first, last := int(a.off-c.first), int(z.off-c.first)-1
		p0, _ := b.at(first)
		pn, n := b.at(last)
		base := p0 - wal.RecordHeaderLen
		if int64(base) != a.pos-c.pos {
			return // the index and the chunk disagree: leave it to point reads
		}
		table = table[:0]
		for i := first; i <= last; i++ {
			p, n := b.at(i)
			table = append(table, uint32(p-base), uint32(n))
		}
		left := uint32(0) // records of the last record's frame after it
		if z.before > 0 {
			left = z.left
		}
		v := newChunk(b.raw[base:pn+n], table, left, l.cache.Alloc)
		l.cache.Set(c.ns, a.pos, v)
		v.Release()
	}
}
