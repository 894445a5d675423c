package engine

import (
	"fmt"
	"sort"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/cache"
)

// Read appends the record at offset to dst and returns it. Records are
// visible once durable. A read-only log's read of a segment file its
// writer has since removed fails with ErrOutOfRange, and of one it has
// since rewritten (TruncateBack) with an error wrapping ErrRewritten:
// reopen the log.
func (l *Log) Read(offset uint64, dst []byte) ([]byte, error) {
	if l.closed() {
		return dst, ErrClosed
	}
	s, err := l.segmentFor(offset)
	if err != nil {
		return dst, err
	}
	defer s.done()
	if out, ok := l.fresh.get(s.ns, offset, dst); ok {
		l.pointReads.Add(1)
		return out, nil
	}
	if out, ok := l.ra.get(s.ns, offset, dst); ok {
		l.noteRead(offset, raChunk{})
		l.pointReads.Add(1)
		return out, nil
	}
	vis := s.vis()
	start, end, complete, err := l.lookup(s, offset, vis)
	if err != nil {
		return dst, err
	}
	v, err := l.chunkBytes(s, start, end, complete, offset)
	if err != nil {
		return dst, err
	}
	defer v.Release()
	c := chunk(v.Bytes())
	rec, ok := c.record(offset - start.off)
	if !ok {
		return dst, s.corrupt("read", start.pos, fmt.Errorf("offset %d is not in the index interval [%d, %d) that should hold it", offset, start.pos, end))
	}
	l.noteRead(offset, raChunk{ns: s.ns, first: start.off, next: start.off + uint64(c.count()), pos: start.pos, end: start.pos + c.span(), left: c.left(), v: v, indexed: s.recordIndexed()})
	l.pointReads.Add(1)
	return append(dst, rec...), nil
}

// segmentFor finds the segment holding offset and takes a reference on it
// (release it when done), or says which bound offset is outside of.
func (l *Log) segmentFor(offset uint64) (*segment, error) {
	for attempt := 0; ; attempt++ {
		segs := *l.segs.Load()
		if l.closed() {
			// Close enters the closed state before it drops the segments: a Close
			// that emptied this snapshot, or released a segment in it, is
			// seen here, and the caller learns why rather than "empty".
			return nil, ErrClosed
		}
		if len(segs) == 0 {
			return nil, fmt.Errorf("%w: the log is empty", ErrOutOfRange)
		}
		if start := l.StartOffset(); offset < start {
			return nil, fmt.Errorf("%w: offset %d is below the start %d (truncated)", ErrOutOfRange, offset, start)
		}
		i := sort.Search(len(segs), func(i int) bool { return segs[i].base > offset }) - 1
		s := segs[max(i, 0)]
		if vis := s.vis(); offset >= vis.off {
			return nil, fmt.Errorf("%w: offset %d is at or past the durable end %d", ErrOutOfRange, offset, vis.off)
		}
		if s.acquire() {
			if err := l.ensure(s); err != nil {
				s.done()
				return nil, err
			}
			return s, nil
		}
		// Dropped between the snapshot and the reference: look again.
	}
}

// chunkBytes returns a chunk holding offset, verified, starting at index
// entry start, in a cache value the caller must release: from the cache,
// or from the device (readRecordRun for a segment of version 3, which
// reads about the record; the whole index interval, verified frame by
// frame, for older ones). It is cached if the bytes up to end can no
// longer change; the run of the growing end of the active segment is kept
// as the log's tail instead.
func (l *Log) chunkBytes(s *segment, start indexEntry, end int64, complete bool, offset uint64) (*cache.Value, error) {
	if complete {
		if v, ok := l.cache.Get(s.ns, start.pos); ok {
			if _, ok := chunk(v.Bytes()).record(offset - start.off); ok {
				return v, nil
			}
			v.Release() // a shorter run of the same entry: read a longer one
		}
	} else if t := l.tail.Load(); t != nil && t.ns == s.ns && t.pos == start.pos && t.v.Acquire(t.id) {
		// The growing last interval, as last read: it still holds every
		// record it held (durable bytes never change), maybe not offset.
		if _, ok := chunk(t.v.Bytes()).record(offset - start.off); ok {
			return t.v, nil
		}
		t.v.Release()
	}
	var v *cache.Value
	var err error
	if s.recordIndexed() {
		var read int64
		v, read, err = l.readRecordRun(s, start, end, offset, s.pointWindow())
		l.readDeviceBytes.Add(read)
	} else {
		v, err = l.readInterval(s, start, end)
	}
	if err != nil {
		return nil, err
	}
	if complete {
		l.cache.Set(s.ns, start.pos, v)
	} else {
		l.keepTail(&tailChunk{ns: s.ns, pos: start.pos, v: v, id: v.ID()})
	}
	return v, nil
}

// readInterval reads the index interval [start.pos, end) of a segment of
// version 1 or 2 with one O_DIRECT read and verifies its frames.
func (l *Log) readInterval(s *segment, start indexEntry, end int64) (*cache.Value, error) {
	var buf []byte
	a := s.dev.Alignment()
	need := alignedbuf.AlignUp(end, int64(a.Offset)) - alignedbuf.AlignDown(start.pos, int64(a.Offset))
	if need <= int64(l.readPool.Size()) && a.Memory <= poolAlign {
		buf = l.readPool.Get()
		defer l.readPool.Put(buf) // buildChunk copies what it keeps
	}
	raw, aligned, err := s.readRange(start.pos, end, buf)
	if err != nil {
		return nil, err
	}
	l.readDeviceBytes.Add(int64(len(aligned)))
	v, stop, err := buildChunk(raw, s.hdr, start, l.cache.Alloc)
	if err == nil && stop != end {
		v.Release()
		err = fmt.Errorf("frames end at %d inside an interval that ends at %d", stop, end)
	}
	if err != nil {
		return nil, s.corrupt("read", stop, err)
	}
	return v, nil
}

// keepTail makes t the log's tail chunk, with a reference of its own
// (taken here; t's value is held by the caller), and lets go of the one
// it replaces; nil lets go of the tail.
func (l *Log) keepTail(t *tailChunk) {
	if t != nil && !t.v.Acquire(t.id) {
		return
	}
	if old := l.tail.Swap(t); old != nil {
		old.v.Release()
	}
	if t != nil && l.closed() { // Close let go of the tail before this read kept one
		l.keepTail(nil)
	}
}

// StartOffset is the first retained offset.
func (l *Log) StartOffset() uint64 {
	segs := *l.segs.Load()
	if len(segs) == 0 {
		return l.start.Load()
	}
	return max(segs[0].base, l.start.Load())
}

// EndOffset is the offset the next appended record gets.
func (l *Log) EndOffset() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.active != nil && l.active.w != nil {
		return l.active.w.NextOffset()
	}
	return l.DurableOffset()
}
