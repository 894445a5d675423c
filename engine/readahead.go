package engine

import (
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
// recently. Each stream keeps the chunk its last read used and the chunks
// read ahead of it, at most raSpan × raDepth bytes (plus one frame wider
// than the span), and runs at most one read-ahead goroutine: so a log
// holds at most raStreams × raDepth × raSpan bytes of read-ahead (8 MiB)
// and raStreams goroutines. A chunk is dropped only once the stream has
// read past its last record, or the stream is replaced: a block the next
// reads of the run will use is never dropped before they run.
const (
	raStreams = 4
	raDepth   = 2       // chunks read ahead of the one in use
	raSpan    = 1 << 20 // bytes per read-ahead read (whole frames; wider for a frame that does not fit)
	raMinRun  = 2       // reads in a row that make a run
)

// raChunk is verified frames of a segment, as a chunk, holding the
// records [first, next) at file positions [pos, end).
type raChunk struct {
	ns          cache.Namespace
	first, next uint64
	pos, end    int64
	left        uint32       // records of the last record's frame after end (0: end is a frame's start)
	v           *cache.Value // held by the stream
	ahead       bool         // read by read-ahead (a hit on it is a read-ahead hit)
}

type raStream struct {
	next    uint64 // the offset the run reads next
	run     int    // 0: the stream is free
	used    uint64 // the reads' clock when last used
	chunks  []raChunk
	reading bool // a read-ahead goroutine runs for this stream
	// span is [lo, hi) of the offsets the stream's chunks hold and nextA
	// its next, for the lock-free checks of every read.
	lo, hi, nextA atomic.Uint64
}

// readAheads is the log's read-ahead state. Every point read consults it,
// so its checks are lock-free until a read is sequential or hits a held
// chunk: the offsets the last raStreams reads asked for (plus one) and
// each stream's bounds are atomics.
type readAheads struct {
	mu      sync.Mutex
	streams [raStreams]raStream // guarded by mu (but for the atomics)
	clock   uint64              // guarded by mu
	closed  bool                // guarded by mu: no more read-ahead starts
	recent  [raStreams]atomic.Uint64
	slot    atomic.Uint64
	wg      sync.WaitGroup // read-ahead goroutines
	hits    atomic.Int64   // point reads served from a chunk read ahead
	bytes   atomic.Int64   // device bytes read ahead
}

// get returns the chunk holding offset off of namespace ns, if a stream
// holds one, with a reference (release it), and the chunk's first offset.
func (ra *readAheads) get(ns cache.Namespace, off uint64) (*cache.Value, uint64, bool) {
	held := false
	for i := range ra.streams {
		st := &ra.streams[i]
		held = held || (st.lo.Load() <= off && off < st.hi.Load())
	}
	if !held {
		return nil, 0, false
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	for i := range ra.streams {
		for _, c := range ra.streams[i].chunks {
			if c.ns == ns && c.first <= off && off < c.next && c.v.Acquire(c.v.ID()) {
				if c.ahead {
					ra.hits.Add(1)
				}
				return c.v, c.first, true
			}
		}
	}
	return nil, 0, false
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
	follows := false
	for i := range ra.recent {
		follows = follows || (off > 0 && ra.recent[i].Load() == off)
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
	case follows: // a new run: off follows the read of off-1
		st.release()
		st.run, st.next = raMinRun, off+1
	default:
		return
	}
	st.used = ra.clock
	// Keep what the stream has not read past, and c if nothing held has
	// off (the reader can be ahead of the read-ahead).
	held := st.holds(off)
	st.dropRead()
	if !held && c.v != nil && c.next > st.next && c.v.Acquire(c.v.ID()) {
		st.chunks = append(st.chunks, c)
	}
	st.publish()
	// While the cache has room for what read-ahead would bring, the run's
	// reads fill it instead (read-ahead's chunks are not cached): a run
	// that warms the cache for random reads later (every record read once,
	// then random reads) must leave them there.
	if !st.reading && !ra.closed && len(st.chunks) > 0 && st.ahead() < raDepth && l.cache.Room() < raDepth*raSpan {
		st.reading = true
		ra.wg.Add(1)
		go l.readAhead(st, st.furthest())
	}
}

// noteRecent remembers that off was read, for the next read to find.
func (ra *readAheads) noteRecent(off uint64) {
	ra.recent[ra.slot.Add(1)%raStreams].Store(off + 1)
}

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
func (st *raStream) dropRead() {
	kept := st.chunks[:0]
	for _, k := range st.chunks {
		if k.next <= st.next {
			k.v.Release()
			continue
		}
		kept = append(kept, k)
	}
	clear(st.chunks[len(kept):])
	st.chunks = kept
}

// furthest is the chunk holding the stream's last offsets: read-ahead
// goes on from its end.
func (st *raStream) furthest() raChunk {
	f := st.chunks[0]
	for _, c := range st.chunks[1:] {
		if c.next > f.next {
			f = c
		}
	}
	return f
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

// publish stores the stream's bounds for the lock-free checks. The
// caller holds ra.mu.
func (st *raStream) publish() {
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
func (st *raStream) release() {
	for _, c := range st.chunks {
		c.v.Release()
	}
	st.chunks = st.chunks[:0]
}

// readAhead reads the chunks after last, up to raDepth ahead of the
// stream's read position, and adds them to the stream; it stops at the
// durable end, at a segment that is still growing past it (its last
// interval is the tail's), at an error (the read that needs the records
// reports it), and when the stream moved elsewhere.
func (l *Log) readAhead(st *raStream, last raChunk) {
	defer l.ra.wg.Done()
	next, pos, left, ns := last.next, last.end, last.left, last.ns
	for {
		c, ok := l.readChunkAhead(ns, next, pos, left)
		ra := &l.ra
		ra.mu.Lock()
		// Still of use if the run has not read past it (a reader faster
		// than the device overtakes it); the chunks it covers go.
		valid := ok && !ra.closed && st.run > 0 && c.next > st.next
		if valid {
			kept := st.chunks[:0]
			for _, k := range st.chunks {
				if k.ns == c.ns && k.first >= c.first && k.next <= c.next {
					k.v.Release()
					continue
				}
				kept = append(kept, k)
			}
			clear(st.chunks[len(kept):])
			st.chunks = append(kept, c)
		} else if ok {
			c.v.Release()
		}
		st.publish()
		if !valid || st.ahead() >= raDepth {
			st.reading = false
			ra.mu.Unlock()
			return
		}
		ra.mu.Unlock()
		next, pos, left, ns = c.next, c.end, c.left, c.ns
	}
}

// readChunkAhead reads the records from offset next on, at file position
// pos of the segment of namespace ns with left records of their frame
// (or, if next is past that segment, from the start of the segment holding
// next), verifies them and returns them as a chunk: whole frames in a
// segment of version 1 or 2, a run of records checked one by one
// (readRecordRun) in one of version 3.
func (l *Log) readChunkAhead(ns cache.Namespace, next uint64, pos int64, left uint32) (raChunk, bool) {
	if l.isClosed.Load() {
		return raChunk{}, false
	}
	s, err := l.segmentFor(next)
	if err != nil {
		return raChunk{}, false
	}
	defer s.done()
	if s.ns != ns {
		pos, left = wal.DataStart, 0 // the next segment
		if s.base != next {
			return raChunk{}, false
		}
	}
	vis := s.vis()
	if l.fresh.has(s.ns, next) {
		return raChunk{}, false // appended last: served from memory anyway
	}
	if s.recordIndexed() {
		v, read, err := l.readRecordRun(s, indexEntry{off: next, pos: pos, left: left}, vis.pos, next, raSpan)
		l.readDeviceBytes.Add(read)
		l.ra.bytes.Add(read)
		if err != nil {
			return raChunk{}, false
		}
		c := chunk(v.Bytes())
		if c.count() == 0 { // nothing whole in the span: the durable end
			v.Release()
			return raChunk{}, false
		}
		return raChunk{ns: s.ns, first: next, next: next + uint64(c.count()), pos: pos, end: pos + c.span(), left: c.left(), v: v, ahead: true}, true
	}
	span := int64(raSpan)
	for {
		to := min(pos+span, vis.pos)
		var buf []byte
		if s.dev.Alignment().Memory <= poolAlign {
			buf = l.raPool.Get()
		}
		raw, aligned, err := s.readRange(pos, to, buf)
		if err != nil {
			l.raPool.Put(buf)
			return raChunk{}, false
		}
		l.readDeviceBytes.Add(int64(len(aligned)))
		l.ra.bytes.Add(int64(len(aligned)))
		v, stop, err := buildChunk(raw, s.hdr, indexEntry{off: next, pos: pos}, l.cache.Alloc)
		l.raPool.Put(buf) // buildChunk copied what it keeps (a larger read allocated its own)
		if err != nil {
			return raChunk{}, false
		}
		if stop == pos { // one frame wider than the span
			v.Release()
			if wide := alignedbuf.AlignUp(int64(s.hdr.MaxWrite), 4096); span < wide && to < vis.pos {
				span = wide
				continue
			}
			return raChunk{}, false
		}
		return raChunk{ns: s.ns, first: next, next: next + uint64(chunk(v.Bytes()).count()), pos: pos, end: stop, v: v, ahead: true}, true
	}
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
		st.release()
		st.run = 0
		st.publish()
	}
}
