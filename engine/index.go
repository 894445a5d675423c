package engine

import (
	"errors"
	"fmt"
	"io"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/wal"
)

// The position index of a segment of wal format version 3 is record
// granular: an entry marks the first record that starts at or after each
// multiple of the segment's index interval (4 KiB by default) of file
// position, so every record starts less than one interval after its entry,
// whatever the size of the batch (the frame) that holds it. A point read
// reads from its entry to the end of its record, walks the record headers
// (crossing frame headers, which the entry's record count says where to
// expect) and checks the record's own checksum: it reads about the record
// plus one interval, never its whole frame.
//
// Segments of versions 1 and 2 (records without checksums) keep the
// frame-granular index they were written with: an entry at each frame
// that starts a new interval, and a point read reads and verifies whole
// frames.

// recordIndexed reports whether s's file has record checksums, and so a
// record-granular index.
func (s *segment) recordIndexed() bool { return s.hdr.Version >= 3 }

// addFrameRecords records the entries a frame of a version 3 file adds:
// the frame at pos holding records from offset first, stamped ts, whose
// record lengths sizes gives in order. Called in file order (wal
// OnReserve, or a scan).
func (s *segment) addFrameRecords(first uint64, pos, ts int64, count int, size func(i int) int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := pos + wal.FrameHeaderLen
	for i := range count {
		if len(s.index) == 0 || alignedbuf.AlignDown(p, s.interval.Load()) > s.lastRec {
			s.index = append(s.index, indexEntry{off: first + uint64(i), pos: p, time: ts,
				back: uint32(p - pos), before: uint32(i), left: uint32(count - i)})
		}
		s.lastRec = p
		p += wal.RecordHeaderLen + int64(size(i))
	}
}

// onReserve is the wal writer's OnReserve hook: it indexes each frame as
// room for it is reserved.
func (s *segment) onReserve(first uint64, pos, ts int64, records [][]byte) {
	if !s.recordIndexed() {
		s.addIndex(first, pos, ts)
		return
	}
	s.addFrameRecords(first, pos, ts, len(records), func(i int) int { return len(records[i]) })
}

// indexFrame indexes a frame found by a scan of s's file.
func (s *segment) indexFrame(f wal.Frame) {
	if !s.recordIndexed() {
		s.addIndex(f.First, f.Pos, f.Time)
		return
	}
	var sizes []int
	wal.Records(s.hdr.Version, f.Payload, func(_ int, rec []byte) bool {
		sizes = append(sizes, len(rec))
		return true
	})
	s.addFrameRecords(f.First, f.Pos, f.Time, f.Count, func(i int) int { return sizes[i] })
}

// frameOf is where the frame holding the record of entry e starts, and
// the offset of its first record.
func (e indexEntry) frameOf() (pos int64, first uint64) {
	return e.pos - int64(e.back), e.off - uint64(e.before)
}

// lookupLocked returns the index entry for off (the last at or before it)
// in the index in memory, and the position before which off's record
// ends: the next entry's position, or the visible end. complete: the
// bytes up to that end never change (a later entry exists, or the segment
// is sealed). The caller holds s.mu (Log.lookup).
func (s *segment) lookupLocked(off uint64, vis position) (e indexEntry, end int64, complete bool) {
	i := entryFor(s.index, off)
	e = s.index[max(i, 0)]
	if i+1 < len(s.index) && s.index[i+1].pos <= vis.pos {
		return e, s.index[i+1].pos, true
	}
	return e, vis.pos, s.sealed
}

// entryFor returns the index of the last entry of index (ascending by
// offset) whose offset is at or before off, or -1. A binary search of a
// segment's index (16k entries of 40 bytes for 64 MiB) touches a cache
// line per step, most of them misses for a random read; entries mark
// evenly spaced file positions, so offsets are close to evenly spaced
// too: it guesses where off is from the first and last entries, then
// gallops from the guess (steps of 1, 2, 4, …) to an interval that holds
// it and searches that: a few lines near the guess, and O(log n) steps
// however uneven the records.
func entryFor(index []indexEntry, off uint64) int {
	n := len(index)
	if n == 0 || off < index[0].off {
		return -1
	}
	first, last := index[0].off, index[n-1].off
	if off >= last {
		return n - 1
	}
	// first <= off < last: the answer is in [0, n-2]. lo's entry is at
	// or before off; hi's is after it.
	g := int(float64(off-first) / float64(last-first) * float64(n-1))
	g = min(max(g, 0), n-2)
	lo, hi := 0, n-1
	if index[g].off <= off {
		lo = g
		for step := 1; lo+step < hi; step *= 2 {
			if index[lo+step].off > off {
				hi = lo + step
				break
			}
			lo += step
		}
	} else {
		hi = g
		for step := 1; hi-step > lo; step *= 2 {
			if index[hi-step].off <= off {
				lo = hi - step
				break
			}
			hi -= step
		}
	}
	for hi-lo > 1 {
		m := int(uint(lo+hi) >> 1)
		if index[m].off <= off {
			lo = m
		} else {
			hi = m
		}
	}
	return lo
}

// pointWindow is what a point read of a version 3 segment reads first
// from its entry on (at most: it stops at the next entry): one index
// interval, before whose end the record asked for starts, and its record
// header. Only the rest of a record that runs past it is read after.
func (s *segment) pointWindow() int64 { return s.interval.Load() + wal.RecordHeaderLen }

// readRecordRun reads from the device the records of s from index entry e
// (or any record position with its place in its frame: where a run
// stopped) up to and including the one at off, and any whole records after
// it that the same read brought, below end (where off's record ends at the
// latest: the next entry, or the visible end). It checks each record's
// checksum and returns them as a chunk whose record k holds offset e.off+k,
// in a cache value the caller must release, and the device bytes it read:
// the range
// [e.pos, min(end, e.pos+span)) (span: pointWindow for a point read, more
// for read-ahead), and past it only
// the rest of off's record, rounded out to the device's offset alignment
// A: at most the record, its header, one interval and 2A (n + 5 KiB for a
// 4 KiB interval and A = 512). An index thinned at seal (or a peer's
// sparser one) does not keep every record within an interval of its entry:
// a walk that has not reached off's record at the end of what it read
// reads on (a span at a time, never past end) instead of giving up.
//
// A checksum that fails, or a walk that finds no record where one must
// be, is corruption: reported with the segment, the file and the position.
func (l *Log) readRecordRun(s *segment, e indexEntry, end int64, off uint64, span int64) (v *cache.Value, read int64, err error) {
	var buf []byte
	if runRead(s, e, end, span) <= int64(l.readPool.Size()) && s.dev.Alignment().Memory <= poolAlign {
		buf = l.readPool.Get()
		defer l.readPool.Put(buf) // the chunk is a copy
	}
	run, read, err := l.readRecords(s, e, end, off, span, buf)
	if err != nil {
		return nil, read, err
	}
	return newChunk(run.raw, run.table, run.left, l.cache.Alloc), read, nil
}

// runRead is how many bytes readRecords first reads into its buffer.
func runRead(s *segment, e indexEntry, end, span int64) int64 {
	a := int64(s.dev.Alignment().Offset)
	return min(alignedbuf.AlignUp(end, a), alignedbuf.AlignUp(e.pos+span, a)) - alignedbuf.AlignDown(e.pos, a)
}

// recordRun is a run of verified records as readRecords found them: their
// file bytes, from the run's first record position, in buf (the aligned
// buffer the records were read into), each record's start (relative to
// raw) and length, and how many records of the last one's frame follow
// the run.
type recordRun struct {
	raw, buf []byte
	table    []uint32
	left     uint32
}

// readRecords is readRecordRun without the copy into a chunk: it reads
// into buf (if it is large enough; runRead says what it needs, a record
// that runs past it grows it into a new buffer) and returns the run where
// it lies.
func (l *Log) readRecords(s *segment, e indexEntry, end int64, off uint64, span int64, buf []byte) (run recordRun, read int64, err error) {
	a := int64(s.dev.Alignment().Offset)
	start := alignedbuf.AlignDown(e.pos, a)
	limit := alignedbuf.AlignUp(end, a)
	have := min(limit, alignedbuf.AlignUp(e.pos+span, a))
	var raw, got []byte
	raw, got, err = s.readAt(start, have, buf)
	if err != nil {
		return run, read, err
	}
	read = int64(len(got))
	// more extends the read to the file bytes before to (at most limit).
	more := func(to int64) error {
		to = min(limit, alignedbuf.AlignUp(to, a))
		if to <= have {
			return nil
		}
		grown := s.dev.Alignment().Alloc(int(to - start))
		copy(grown, raw)
		_, got, err := s.readAt(have, to, grown[have-start:])
		if err != nil {
			return err
		}
		read += int64(len(got))
		raw, have = grown, to
		return nil
	}
	var table []uint32
	p, k, left := e.pos, e.off, e.left
	for {
		if left == 0 { // the frame ended: the next one's header follows
			p = alignedbuf.AlignUp(p, wal.FrameAlign)
			if k <= off && p+wal.FrameHeaderLen > have {
				if err := more(p + span); err != nil {
					return run, read, err
				}
			}
			if p+wal.FrameHeaderLen > have {
				break
			}
			h, err := wal.DecodeFrameHeader(raw[p-start:], int(s.hdr.MaxWrite))
			if err == nil && (h.Type != wal.FrameRecords || h.First != k) {
				err = fmt.Errorf("a frame of type %d holding offsets from %d where offset %d's frame must be", h.Type, h.First, k)
			}
			if err != nil {
				if k > off {
					break // past the record asked for: not ours to judge
				}
				return run, read, l.pointReadCorrupt(s, e, off, p, err)
			}
			p += wal.FrameHeaderLen
			left = h.Count
		}
		if k <= off && p+wal.RecordHeaderLen > have {
			if err := more(p + span); err != nil {
				return run, read, err
			}
		}
		if p+wal.RecordHeaderLen > have {
			if k <= off {
				return run, read, l.pointReadCorrupt(s, e, off, p, fmt.Errorf("no record header before byte %d, where offset %d's record must have started", have, off))
			}
			break
		}
		n, crc := wal.DecodeRecordHeader(raw[p-start:])
		recEnd := p + wal.RecordHeaderLen + int64(n)
		if n > wal.MaxRecordSize || recEnd > end {
			if k <= off {
				return run, read, l.pointReadCorrupt(s, e, off, p, fmt.Errorf("record %d claims %d bytes, past byte %d where it must end", k, n, end))
			}
			break
		}
		if recEnd > have {
			if k > off {
				break
			}
			// A record before off's (a thinned index) runs past the read:
			// read it and a span after it. off's record: read its rest.
			to := recEnd
			if k < off {
				to += span
			}
			if err := more(to); err != nil {
				return run, read, err
			}
		}
		rec := raw[p+wal.RecordHeaderLen-start : recEnd-start]
		if err := wal.VerifyRecord(s.hdr.SegmentID, k, p, crc, rec); err != nil {
			return run, read, l.pointReadCorrupt(s, e, off, p, err)
		}
		table = append(table, uint32(p+wal.RecordHeaderLen-e.pos), uint32(n))
		p, k, left = recEnd, k+1, left-1
		if k > off && p >= end {
			break
		}
	}
	return recordRun{raw: raw[e.pos-start : p-start], buf: raw[:cap(raw)], table: table, left: left}, read, nil
}

// readAt reads the file bytes [from, to), both aligned, into buf (or a new
// aligned buffer if buf is too small) with one O_DIRECT read, and returns
// them and the bytes of the buffer the device returned (fewer at the end
// of the file; what was read, for the counters). Reading past the end of
// the file is an error only for bytes below the visible end.
func (s *segment) readAt(from, to int64, buf []byte) (data, aligned []byte, err error) {
	if int64(len(buf)) < to-from {
		buf = s.dev.Alignment().Alloc(int(to - from))
	}
	buf = buf[:to-from]
	n, err := s.dev.ReadAt(buf, from)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("engine: read segment %d (%s) bytes [%d, %d): %w", s.base, s.path, from, to, err)
	}
	if vis := s.vis().pos; from+int64(n) < min(to, vis) {
		return nil, nil, s.corrupt("read", from+int64(n), fmt.Errorf("file ends at %d, records were acknowledged up to %d", from+int64(n), vis))
	}
	return buf, buf[:n], nil // aligned: the bytes the device returned (fewer at the end of the file)
}

// pointReadCorrupt reports damage a point read of offset off found at
// position p, walking from entry e. It then verifies the whole frame that
// holds the record (the error path may read more) to say what is damaged.
func (l *Log) pointReadCorrupt(s *segment, e indexEntry, off uint64, p int64, cause error) error {
	pos, first := e.frameOf()
	detail := ""
	if raw, _, err := s.readRange(pos, min(s.vis().pos, pos+int64(s.hdr.MaxWrite)), nil); err == nil {
		if _, _, ferr := wal.DecodeFrames(raw, s.hdr, pos, first, func(f wal.Frame) bool { return f.First+uint64(f.Count) <= off }); ferr != nil {
			detail = "; the frame check says: " + ferr.Error()
		}
	}
	return s.corrupt("read", p, fmt.Errorf("offset %d (walking from the index entry of offset %d at byte %d): %w%s", off, e.off, e.pos, cause, detail))
}

// A sealed segment's footer (version 2 in a file of version 3, version 1
// in older ones) is encoded and decoded by package layout, which draws
// it; these are the sizes the engine reads index blocks by.
const (
	indexBlockLen   = layout.IndexBlockLen
	indexBlockHead  = layout.IndexBlockHead
	indexEntryLen   = layout.IndexEntryLen
	entriesPerBlock = layout.EntriesPerBlock
)

// footerSummary is what a sealed segment of version 3 keeps of its
// footer: its trailer's facts and each index block's first offset and
// time.
type footerSummary = layout.Summary

// entryCheck matches a footer's index entries, in order, against the
// frames a scan of the file finds, in order: each entry must be a record
// (a frame, for versions 1 and 2) that the scan finds, with its offset,
// time and place in its frame (reads trust the index to find records).
type entryCheck struct {
	index []indexEntry
	hdr   wal.FileHeader
	j     int
}

// frame checks the entries that fall in f; it returns the index of a bad
// entry, or -1.
func (c *entryCheck) frame(f wal.Frame) int {
	if c.j < len(c.index) && c.index[c.j].pos < f.Pos {
		return c.j
	}
	if c.hdr.Version < 3 {
		if c.j < len(c.index) && c.index[c.j].pos == f.Pos {
			if e := c.index[c.j]; e.off != f.First || e.time != f.Time {
				return c.j
			}
			c.j++
		}
		return -1
	}
	p := f.Pos + wal.FrameHeaderLen
	bad := -1
	wal.Records(c.hdr.Version, f.Payload, func(i int, rec []byte) bool {
		if c.j < len(c.index) && c.index[c.j].pos == p {
			want := indexEntry{off: f.First + uint64(i), pos: p, time: f.Time, back: uint32(p - f.Pos), before: uint32(i), left: uint32(f.Count - i)}
			if c.index[c.j] != want {
				bad = c.j
				return false
			}
			c.j++
		}
		p += wal.RecordHeaderLen + int64(len(rec))
		return true
	})
	if bad < 0 && c.j < len(c.index) && c.index[c.j].pos < f.End() {
		return c.j // inside the frame, but at no record
	}
	return bad
}

// rest returns the index of the first entry no frame matched, or -1.
func (c *entryCheck) rest() int {
	if c.j < len(c.index) {
		return c.j
	}
	return -1
}
