package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/cache"
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

// Footer version 2 (the engine's bytes in the wal footer frame of a
// version 3 file), little endian. The index entries are kept in 4 KiB
// blocks that start at 4 KiB file positions, each with its own checksum,
// so a reader can fetch and verify one block without reading the footer;
// a summary (each block's first offset and time) and a trailer end the
// footer, so the file's last bytes describe it:
//
//	footer:  0        4        8
//	         +--------+--------+--- - - ---+------- - - -------+---------- - -+----------+
//	         |version | flags  | zero pad   | blocks × 4096     | summary       | trailer  |
//	         +--------+--------+--- - - ---+------- - - -------+---------- - -+----------+
//	                             (to a 4 KiB file position)      blocks × (first offset | first time)
//
//	trailer: 0        4        8                16               24      28       32       36       40       44      48
//	         +--------+--------+----------------+----------------+-------+--------+--------+--------+--------+-------+
//	         |version | flags  | record count   | data end (pos) |interv.|entries | blocks | blocksAt (u64)  | crc32c|
//	         +--------+--------+----------------+----------------+-------+--------+--------+--------+--------+-------+
//
//	block:   0        4        8                16               24               32
//	         +--------+--------+----------------+----------------+----------------+---- - ----------------+-- - --+
//	         | crc32c | count  | first offset   | next position  | reserved (0)   | count × entry (32 B)   | zeros |
//	         +--------+--------+----------------+----------------+----------------+---- - ----------------+-- - --+
//
//	entry:   0                8                16       20       24       28       32
//	         +----------------+----------------+--------+--------+--------+--------+
//	         | position       | time (ns)      |off−base| back   | before | left   |
//	         +----------------+----------------+--------+--------+--------+--------+
//
// A block's next position is where the record of its last entry ends at
// the latest: the next block's first entry's position, or the data end. A
// block's crc32c covers the segment id (8 bytes), the block's file
// position (8 bytes) and block bytes [4, 4096); the trailer's covers the
// segment id, the trailer's file position, trailer bytes [0, 44) and the
// summary. The wal frame's checksum covers the whole footer as well.
const (
	footerVersion2   = 2
	footerHeadLen    = 8
	footerTrailerLen = 48
	summaryEntryLen  = 16
	indexBlockLen    = 4096
	indexBlockHead   = 32
	indexEntryLen    = 32
	entriesPerBlock  = (indexBlockLen - indexBlockHead) / indexEntryLen // 127
)

// footerV2Size is the size of a version 2 footer of n entries whose frame
// is at dataEnd, and where its blocks start.
func footerV2Size(dataEnd int64, n int) (size int, blocksAt int64) {
	payload := dataEnd + wal.FrameHeaderLen
	blocksAt = alignedbuf.AlignUp(payload+footerHeadLen, indexBlockLen)
	nb := (n + entriesPerBlock - 1) / entriesPerBlock
	return int(blocksAt-payload) + nb*(indexBlockLen+summaryEntryLen) + footerTrailerLen, blocksAt
}

// footerV2Fits is how many entries a version 2 footer holds in a footer
// frame of at most batch payload bytes, wherever it starts.
func footerV2Fits(batch int) int {
	room := batch - wal.FooterTailLen - footerHeadLen - (indexBlockLen - wal.FrameAlign) - footerTrailerLen
	return max(room/(indexBlockLen+summaryEntryLen), 0) * entriesPerBlock
}

func encodeEntry(b []byte, base uint64, e indexEntry) {
	binary.LittleEndian.PutUint64(b[0:], uint64(e.pos))
	binary.LittleEndian.PutUint64(b[8:], uint64(e.time))
	binary.LittleEndian.PutUint32(b[16:], uint32(e.off-base))
	binary.LittleEndian.PutUint32(b[20:], e.back)
	binary.LittleEndian.PutUint32(b[24:], e.before)
	binary.LittleEndian.PutUint32(b[28:], e.left)
}

func decodeEntry(b []byte, base uint64) indexEntry {
	return indexEntry{pos: int64(binary.LittleEndian.Uint64(b[0:])), time: int64(binary.LittleEndian.Uint64(b[8:])),
		off: base + uint64(binary.LittleEndian.Uint32(b[16:])), back: binary.LittleEndian.Uint32(b[20:]),
		before: binary.LittleEndian.Uint32(b[24:]), left: binary.LittleEndian.Uint32(b[28:])}
}

// blockChecksum is the checksum of an index block or trailer at file
// position pos of the file with identity segID.
func blockChecksum(segID uint64, pos int64, parts ...[]byte) uint32 {
	var seed [16]byte
	binary.LittleEndian.PutUint64(seed[0:], segID)
	binary.LittleEndian.PutUint64(seed[8:], uint64(pos))
	c := crc32.Update(0, castagnoli, seed[:])
	for _, p := range parts {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

// encodeFooterV2 encodes the version 2 footer of a segment with identity
// segID at base whose records (count of them) end at dataEnd, with the
// entries index at interval.
func encodeFooterV2(segID, base uint64, count uint64, dataEnd int64, interval int64, index []indexEntry) []byte {
	size, blocksAt := footerV2Size(dataEnd, len(index))
	payload := dataEnd + wal.FrameHeaderLen
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b[0:], footerVersion2)
	nb := (len(index) + entriesPerBlock - 1) / entriesPerBlock
	sum := b[blocksAt-payload+int64(nb*indexBlockLen):]
	for k := range nb {
		blk := b[blocksAt-payload+int64(k*indexBlockLen):][:indexBlockLen]
		part := index[k*entriesPerBlock : min(len(index), (k+1)*entriesPerBlock)]
		next := dataEnd
		if k+1 < nb {
			next = index[(k+1)*entriesPerBlock].pos
		}
		binary.LittleEndian.PutUint32(blk[4:], uint32(len(part)))
		binary.LittleEndian.PutUint64(blk[8:], part[0].off)
		binary.LittleEndian.PutUint64(blk[16:], uint64(next))
		for i, e := range part {
			encodeEntry(blk[indexBlockHead+i*indexEntryLen:], base, e)
		}
		binary.LittleEndian.PutUint32(blk[0:], blockChecksum(segID, blocksAt+int64(k*indexBlockLen), blk[4:]))
		binary.LittleEndian.PutUint64(sum[summaryEntryLen*k:], part[0].off)
		binary.LittleEndian.PutUint64(sum[summaryEntryLen*k+8:], uint64(part[0].time))
	}
	tr := b[size-footerTrailerLen:]
	binary.LittleEndian.PutUint32(tr[0:], footerVersion2)
	binary.LittleEndian.PutUint64(tr[8:], count)
	binary.LittleEndian.PutUint64(tr[16:], uint64(dataEnd))
	binary.LittleEndian.PutUint32(tr[24:], uint32(interval))
	binary.LittleEndian.PutUint32(tr[28:], uint32(len(index)))
	binary.LittleEndian.PutUint32(tr[32:], uint32(nb))
	binary.LittleEndian.PutUint64(tr[36:], uint64(blocksAt))
	binary.LittleEndian.PutUint32(tr[44:], blockChecksum(segID, payload+int64(size-footerTrailerLen), tr[:44], sum[:summaryEntryLen*nb]))
	return b
}

// footerSummary is what a segment keeps in memory of a version 2 footer:
// the trailer's facts and each block's first offset and time.
type footerSummary struct {
	count    uint64 // records
	dataEnd  int64
	interval int64
	entries  int
	blocksAt int64
	first    []blockFirst
}

// blockFirst is a summary slot: an index block's first offset and time.
type blockFirst struct {
	off  uint64
	time int64
}

// decodeFooterSummary checks the trailer and summary at the end of b, the
// last bytes of a version 2 footer (at least the trailer and summary; all
// of it, or its end) of the segment at base with identity segID, whose
// footer frame is at pos with next offset next and whose footer is size
// bytes.
func decodeFooterSummary(b []byte, size int, segID, base, next uint64, pos int64) (*footerSummary, error) {
	payload := pos + wal.FrameHeaderLen
	if len(b) < footerTrailerLen || size%wal.FrameAlign != 0 || len(b) > size {
		return nil, fmt.Errorf("footer of %d bytes cannot be a version 2 footer", size)
	}
	tr := b[len(b)-footerTrailerLen:]
	sm := &footerSummary{count: binary.LittleEndian.Uint64(tr[8:]), dataEnd: int64(binary.LittleEndian.Uint64(tr[16:])),
		interval: int64(binary.LittleEndian.Uint32(tr[24:])), entries: int(binary.LittleEndian.Uint32(tr[28:])),
		blocksAt: int64(binary.LittleEndian.Uint64(tr[36:]))}
	nb := int(binary.LittleEndian.Uint32(tr[32:]))
	want, wantAt := footerV2Size(pos, sm.entries)
	switch {
	case binary.LittleEndian.Uint32(tr[0:]) != footerVersion2:
		return nil, fmt.Errorf("footer trailer version %d, want %d", binary.LittleEndian.Uint32(tr[0:]), footerVersion2)
	case want != size || sm.blocksAt != wantAt || nb != (sm.entries+entriesPerBlock-1)/entriesPerBlock:
		return nil, fmt.Errorf("footer of %d bytes claims %d entries in %d blocks from byte %d", size, sm.entries, nb, sm.blocksAt)
	case len(b) < footerTrailerLen+summaryEntryLen*nb:
		return nil, fmt.Errorf("footer summary of %d blocks is not in the %d bytes read", nb, len(b))
	case base+sm.count != next:
		return nil, fmt.Errorf("footer counts %d records from %d, the frame says the next offset is %d", sm.count, base, next)
	case sm.dataEnd != pos:
		return nil, fmt.Errorf("footer says records end at %d, the footer frame is at %d", sm.dataEnd, pos)
	case sm.interval <= 0:
		return nil, fmt.Errorf("footer index interval %d", sm.interval)
	case (sm.count == 0) != (sm.entries == 0):
		return nil, fmt.Errorf("footer of %d records has %d index entries", sm.count, sm.entries)
	}
	sum := b[len(b)-footerTrailerLen-summaryEntryLen*nb : len(b)-footerTrailerLen]
	if got, want := blockChecksum(segID, payload+int64(size-footerTrailerLen), tr[:44], sum), binary.LittleEndian.Uint32(tr[44:]); got != want {
		return nil, fmt.Errorf("footer trailer checksum %#08x, want %#08x", got, want)
	}
	sm.first = make([]blockFirst, nb)
	for k := range sm.first {
		sm.first[k] = blockFirst{off: binary.LittleEndian.Uint64(sum[summaryEntryLen*k:]), time: int64(binary.LittleEndian.Uint64(sum[summaryEntryLen*k+8:]))}
		if sm.first[k].off < base || sm.first[k].off >= next || (k > 0 && (sm.first[k].off <= sm.first[k-1].off || sm.first[k].time < sm.first[k-1].time)) {
			return nil, fmt.Errorf("footer summary slot %d (offset %d) is out of order or range", k, sm.first[k].off)
		}
	}
	if nb > 0 && sm.first[0].off != base {
		return nil, errors.New("footer index does not start at the first record")
	}
	return sm, nil
}

// decodeFooterV2 checks a whole version 2 footer b of the segment at base
// with identity segID, whose footer frame is at pos with next offset next,
// and returns its entries and interval: the trailer and summary, every
// block, and entries that ascend inside the segment's record range.
func decodeFooterV2(b []byte, segID, base, next uint64, pos int64) (index []indexEntry, interval int64, err error) {
	sm, err := walkFooterV2(b, segID, base, next, pos, func(part []indexEntry) { index = append(index, part...) })
	if err != nil {
		return nil, 0, err
	}
	return index, sm.interval, nil
}

// walkFooterV2 checks a whole version 2 footer as decodeFooterV2 does and
// returns its summary, handing each block's entries to each (if not nil)
// in order: a caller that keeps only the summary holds one block's
// entries at a time.
func walkFooterV2(b []byte, segID, base, next uint64, pos int64, each func([]indexEntry)) (*footerSummary, error) {
	sm, err := decodeFooterSummary(b, len(b), segID, base, next, pos)
	if err != nil {
		return nil, err
	}
	payload := pos + wal.FrameHeaderLen
	if !zeroBytes(b[footerHeadLen : sm.blocksAt-payload]) {
		return nil, fmt.Errorf("footer padding before its index blocks (bytes %d to %d) is not zero", payload+footerHeadLen, sm.blocksAt)
	}
	var prev *indexEntry
	for k := range sm.first {
		at := sm.blocksAt + int64(k*indexBlockLen)
		part, err := sm.checkBlock(b[at-payload:][:indexBlockLen], k, segID, base, next, prev)
		if err != nil {
			return nil, err
		}
		if k > 0 {
			if prevNext := binary.LittleEndian.Uint64(b[at-indexBlockLen-payload+16:]); int64(prevNext) != part[0].pos {
				return nil, fmt.Errorf("index block %d says the next block starts at byte %d, it starts at %d", k-1, prevNext, part[0].pos)
			}
		}
		prev = &part[len(part)-1]
		if each != nil {
			each(part)
		}
	}
	return sm, nil
}

// checkBlock decodes index block k of the footer sm describes, blk (read
// from its file position), and checks it: its own checksum and head, that
// it agrees with its summary slot (first offset and time, entry count; the
// last block's next position is the data end), and that its entries
// ascend (from prev, the previous block's last entry, if known) inside
// the segment's record range. A lone block read through the cache is
// checked the same way as a block of a whole footer.
func (sm *footerSummary) checkBlock(blk []byte, k int, segID, base, next uint64, prev *indexEntry) ([]indexEntry, error) {
	at := sm.blocksAt + int64(k*indexBlockLen)
	part, bnext, err := decodeIndexBlock(blk, segID, base, at)
	if err != nil {
		return nil, err
	}
	first := sm.first[k]
	last := k+1 == len(sm.first)
	if want := min(entriesPerBlock, sm.entries-k*entriesPerBlock); len(part) != want || part[0].off != first.off || part[0].time != first.time || (last && bnext != sm.dataEnd) || bnext > sm.dataEnd {
		return nil, fmt.Errorf("index block %d at byte %d (%d entries from offset %d) disagrees with the summary (%d from %d)", k, at, len(part), part[0].off, want, first.off)
	}
	for j := range part {
		e, i := part[j], k*entriesPerBlock+j
		if j > 0 {
			prev = &part[j-1]
		}
		if e.off < base || e.off >= next || e.pos < wal.DataStart+wal.FrameHeaderLen || e.pos >= sm.dataEnd ||
			int64(e.back) > e.pos-wal.DataStart || uint64(e.before) > e.off-base || e.left == 0 ||
			(prev != nil && (e.off <= prev.off || e.pos <= prev.pos || e.time < prev.time)) {
			return nil, fmt.Errorf("footer index entry %d (offset %d at %d) is out of order or range", i, e.off, e.pos)
		}
	}
	if k == 0 && (part[0].pos != wal.DataStart+wal.FrameHeaderLen || part[0].before != 0) {
		return nil, errors.New("footer index does not start at the first record")
	}
	return part, nil
}

// decodeIndexBlock checks the index block at file position at and
// returns its entries and its next position.
func decodeIndexBlock(blk []byte, segID, base uint64, at int64) ([]indexEntry, int64, error) {
	if got, want := blockChecksum(segID, at, blk[4:indexBlockLen]), binary.LittleEndian.Uint32(blk[0:]); got != want {
		return nil, 0, fmt.Errorf("index block at byte %d: checksum %#08x, want %#08x", at, got, want)
	}
	n := int(binary.LittleEndian.Uint32(blk[4:]))
	if n == 0 || n > entriesPerBlock {
		return nil, 0, fmt.Errorf("index block at byte %d claims %d entries", at, n)
	}
	out := make([]indexEntry, n)
	for i := range out {
		out[i] = decodeEntry(blk[indexBlockHead+i*indexEntryLen:], base)
	}
	next := int64(binary.LittleEndian.Uint64(blk[16:]))
	if !zeroBytes(blk[24:indexBlockHead]) || !zeroBytes(blk[indexBlockHead+n*indexEntryLen:indexBlockLen]) {
		return nil, 0, fmt.Errorf("index block at byte %d: reserved bytes, or those after its %d entries, are not zero", at, n)
	}
	if out[0].off != binary.LittleEndian.Uint64(blk[8:]) || next <= out[n-1].pos {
		return nil, 0, fmt.Errorf("index block at byte %d: its head (offset %d, next position %d) disagrees with its entries", at, binary.LittleEndian.Uint64(blk[8:]), next)
	}
	return out, next, nil
}

// zeroBytes reports whether b holds only zeros.
func zeroBytes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

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
