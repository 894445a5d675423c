package engine

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/segstore/segstore/wal"
)

// readAhead is how much an Iterator reads at once: O_DIRECT gets no kernel
// read-ahead, so the iterator does its own, in large aligned reads.
const readAhead = 1 << 20

// Iterator reads records in offset order from a starting offset up to the
// durable end. When it has caught up, Next returns false with a nil Err;
// calling Next again later continues with records that became durable
// since (use Log.Wait to block for them). Iterators read around the cache,
// so a scan does not evict the point-read working set. An Iterator is not
// safe for concurrent use.
type Iterator struct {
	l    *Log
	next uint64 // offset of the next record to return

	seg    *segment
	pos    int64  // file position of the next frame to decode in seg
	posOff uint64 // offset of that frame's first record
	buf    []byte // verified frames: file bytes [bufPos, bufPos+len(buf))
	bufPos int64
	// Two aligned read buffers: the current one (under buf) and the one the
	// read-ahead goroutine fills with the bytes after it, so the device
	// reads while the caller consumes records.
	raw   [2][]byte
	cur   int
	ahead *readAheadOp

	frame   wal.Frame // the frame being returned record by record
	recPos  int       // cursor in frame.Payload
	recNext uint64    // offset of the record at recPos
	hl      int       // record header length in frame's file

	off  uint64
	rec  []byte
	time int64
	err  error
}

// NewIterator returns an iterator positioned before the record at from.
func (l *Log) NewIterator(from uint64) *Iterator { return &Iterator{l: l, next: from} }

// Next advances to the next record and reports whether there is one.
func (it *Iterator) Next() bool {
	for it.err == nil {
		if it.nextInFrame() {
			return true
		}
		ok, err := it.nextFrame()
		if err != nil {
			it.err = err
		}
		if !ok {
			return false
		}
	}
	return false
}

// nextInFrame moves to the next wanted record of the current frame.
func (it *Iterator) nextInFrame() bool {
	p, hl := it.frame.Payload, it.hl
	for hl > 0 && it.recPos+hl <= len(p) {
		n := int(binary.LittleEndian.Uint32(p[it.recPos:]))
		rec := p[it.recPos+hl : it.recPos+hl+n]
		off := it.recNext
		it.recPos += hl + n
		it.recNext++
		if off >= it.next {
			it.off, it.rec, it.time = off, rec, it.frame.Time
			it.next = off + 1
			return true
		}
	}
	return false
}

// nextFrame loads the next verified frame, crossing into the next segment
// at the end of a sealed (or retired) one. It returns false when caught up.
func (it *Iterator) nextFrame() (bool, error) {
	for {
		if it.l.closed() {
			return false, ErrClosed
		}
		if it.seg != nil && it.seg.gone.Load() { // truncated or rewritten
			it.leaveSegment()
		}
		if it.seg == nil {
			s, err := it.l.segmentFor(it.next)
			// Out of range but not below the start: it.next was at or past
			// the durable end when segmentFor looked (comparing with the
			// end now would race appends after a TruncateBack).
			if errors.Is(err, ErrOutOfRange) && it.next >= it.l.StartOffset() {
				return false, nil // caught up
			}
			if err != nil {
				return false, err
			}
			start, _, _, err := it.l.lookup(s, it.next, s.vis())
			if err != nil {
				s.done()
				return false, err
			}
			pos, first := start.frameOf()
			it.seg, it.pos, it.posOff, it.buf = s, pos, first, nil
		}
		vis := it.seg.vis()
		if it.pos >= vis.pos {
			it.seg.mu.RLock()
			sealed := it.seg.sealed
			it.seg.mu.RUnlock()
			if !sealed && !it.seg.retired.Load() {
				return false, nil // caught up with the active segment
			}
			it.leaveSegment()
			continue
		}
		if it.pos < it.bufPos || it.pos >= it.bufPos+int64(len(it.buf)) {
			if err := it.fill(vis.pos); err != nil {
				return false, err
			}
		}
		b := it.buf[it.pos-it.bufPos:]
		h, err := wal.DecodeFrameHeader(b, len(b))
		if err != nil { // verified in fill: cannot happen unless memory is damaged
			return false, it.seg.corrupt("iterate", it.pos, err)
		}
		size := wal.FrameSize(int(h.Length))
		it.frame = wal.Frame{Pos: it.pos, Size: size, First: h.First, Count: int(h.Count), Time: h.Timestamp,
			Payload: b[wal.FrameHeaderLen : wal.FrameHeaderLen+int(h.Length)]}
		it.recPos, it.recNext, it.hl = 0, h.First, it.seg.hdr.RecordHeaderLen()
		it.pos += int64(size)
		it.posOff = h.First + uint64(h.Count)
		return true, nil
	}
}

// readAheadOp is one read of the segment in flight.
type readAheadOp struct {
	seg           *segment
	from, to      int64
	done          chan struct{}
	data, aligned []byte
	err           error
}

// startReadAhead reads [from, to) of the current segment into the buffer
// not in use, in a goroutine.
func (it *Iterator) startReadAhead(from, to int64) {
	op := &readAheadOp{seg: it.seg, from: from, to: to, done: make(chan struct{})}
	buf := it.raw[1-it.cur]
	go func() {
		defer close(op.done)
		op.data, op.aligned, op.err = op.seg.readRange(op.from, op.to, buf)
	}()
	it.ahead = op
}

// waitReadAhead waits for the read in flight, if any, and forgets it.
func (it *Iterator) waitReadAhead() *readAheadOp {
	op := it.ahead
	if op != nil {
		<-op.done
		it.ahead = nil
	}
	return op
}

// fill reads and verifies whole frames from it.pos, up to readAhead bytes
// (or one frame, if larger) but never past end; then starts reading what
// follows.
func (it *Iterator) fill(end int64) error {
	return it.fillSpan(end, readAhead)
}

// fillSpan is fill reading span bytes at a time; it widens to the largest
// possible frame when one frame does not fit.
func (it *Iterator) fillSpan(end, span int64) error {
	s := it.seg
	to := min(it.pos+span, end)
	var raw, aligned []byte
	var err error
	if op := it.waitReadAhead(); op != nil && op.seg == s && op.from == it.pos && op.to == to {
		raw, aligned, err = op.data, op.aligned, op.err
		it.cur = 1 - it.cur
	} else {
		raw, aligned, err = s.readRange(it.pos, to, it.raw[it.cur])
	}
	if err != nil {
		return err
	}
	if len(aligned) > len(it.raw[it.cur]) { // keep the larger buffer for later fills
		it.raw[it.cur] = aligned[:cap(aligned)]
	}
	// Start reading what follows before verifying these bytes, so the
	// device works while the checksums are computed: the next range starts
	// where the last whole frame ends, found from the frame lengths alone.
	// If verification then stops elsewhere (damage), that read goes unused.
	if next := frameEnds(raw, it.pos); next > it.pos && next < end {
		it.startReadAhead(next, min(next+span, end))
	}
	stop, _, err := wal.DecodeFrames(raw, s.hdr, it.pos, it.posOff, func(wal.Frame) bool { return true })
	if err == nil && stop == it.pos {
		if wide := int64(s.hdr.MaxWrite); span < wide && to < end {
			return it.fillSpan(end, wide) // one frame larger than the read-ahead
		}
		err = errors.New("no whole frame fits before the durable end")
	}
	if err != nil {
		return s.corrupt("iterate", stop, err)
	}
	it.buf, it.bufPos = raw[:stop-it.pos], it.pos
	return nil
}

// frameEnds returns where the whole frames in raw (file bytes from pos)
// end, going by their lengths alone (unverified).
func frameEnds(raw []byte, pos int64) int64 {
	p := 0
	for {
		h, err := wal.DecodeFrameHeader(raw[p:], len(raw)-p)
		if err != nil || h.Type != wal.FrameRecords {
			return pos + int64(p)
		}
		size := wal.FrameSize(int(h.Length))
		if p+size > len(raw) {
			return pos + int64(p)
		}
		p += size
	}
}

// Offset is the current record's offset.
func (it *Iterator) Offset() uint64 { return it.off }

// Record is the current record; valid until the next call to Next.
func (it *Iterator) Record() []byte { return it.rec }

// Time is when the current record was appended.
func (it *Iterator) Time() time.Time { return time.Unix(0, it.time) }

// Err is the error that stopped the iterator, or nil.
func (it *Iterator) Err() error { return it.err }

// leaveSegment waits for the read in flight and lets go of the segment.
func (it *Iterator) leaveSegment() {
	it.waitReadAhead()
	it.seg.done()
	it.seg, it.buf = nil, nil
}

// Close releases the iterator's buffers and its hold on a segment file.
func (it *Iterator) Close() error {
	if it.seg != nil {
		it.leaveSegment()
	}
	it.raw, it.frame = [2][]byte{}, wal.Frame{}
	return nil
}
