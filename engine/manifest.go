package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path/filepath"

	"github.com/segstore/segstore/wal"
)

// The manifest lists what the sealed segments' footers say, so Open can
// trust a sealed segment without opening its file: the file is opened and
// its footer checked against the entry on first use (lazy loading, as
// Kafka loads the indexes of old segments). Open's cost is then a
// directory listing and one small read whatever the number of segments.
//
// MANIFEST is a metadata file (see meta.go) of kind metaManifest whose
// payload is a count and the entries, little endian:
//
//	0        4        8
//	+--------+--------+---- - -
//	| count  | 0      | count × entry
//	+--------+--------+---- - -
//
//	entry: 0      8      16        24     32         40          48      52    56
//	       +------+------+---------+------+----------+-----------+-------+-----+
//	       | base | next | dataEnd | size | sealedAt | firstTime | crc   | 0   |
//	       +------+------+---------+------+----------+-----------+-------+-----+
//
// next is the offset after the last record, dataEnd the footer frame's
// position, size the file's, sealedAt and firstTime unix nanoseconds (seal
// time, first frame's time), crc the CRC-32C of the footer bytes.
//
// A clean Close appends one more record, which the first change after
// the next open removes (rewriting the manifest, durably) before anything
// is written:
//
//	0          8      16     24     32     40         48        56     60     64
//	+----------+------+------+------+------+----------+---------+------+------+---- - -
//	| cleanen2 | base | end  | size | next | lastTime | lastRec | n    | 0    | index (n bytes)
//	+----------+------+------+------+------+----------+---------+------+------+---- - -
//
// The last segment's records end at position end with next offset next,
// the last frame stamped lastTime, in a file of size bytes; lastRec is
// where its last record starts (what the record-granular index goes on
// from; 0 for older formats); index is its index in the footer's encoding
// (encodeFooter, decodeFooterIndex). An
// open that finds that segment's file of that size, with zeros after end
// in end's block, takes all of it from here and reads none of its records
// (Recovery.CleanIndex). The commit point that keeps this true is the
// manifest rewrite without the record that the first change after the
// open makes, durably, before it writes anything (dropCleanRecord): a
// crash after a write never finds the record. A manifest written by an earlier version ends
// in a 32-byte record, "cleanend" base end size: the open then scans the
// last segment's frames up to end, but not the preallocated zeros after
// it (wal TrustCleanEnd).
//
// It is rewritten whole at every roll, before the directory fsync that
// commits the new segment, so a sealed segment is never followed by a
// newer segment while the manifest holds an older description of it. An
// entry is only trusted for a segment that is not the last file and whose
// next offset is the next file's base; anything else is opened eagerly.
// A stale or missing manifest therefore costs time, never correctness.
const (
	manifestName     = "MANIFEST"
	metaManifest     = 2
	manifestEntryLen = 56
	cleanMagic       = "cleanend" // an earlier version's record: base, end, size
	cleanLen         = 32
	clean2Magic      = "cleanen2"
	clean2Len        = 64 // before the index bytes
)

// cleanEnd is where a clean Close left the last segment. index is nil
// for an earlier version's record (then next and lastTime are unset).
type cleanEnd struct {
	base      uint64
	end, size int64
	next      uint64
	lastTime  int64
	lastRec   int64  // position of the last record (version 3 files)
	index     []byte // the footer's encoding of the segment's index
}

// manifestEntry is what a sealed segment's footer says about it. The zero
// entry (next 0) stands for none.
type manifestEntry struct {
	base, next    uint64
	dataEnd, size int64
	sealedAt      int64
	firstTime     int64
	crc           uint32
}

// footerEntry describes the sealed segment s from its footer frame.
// Its checksum names the footer: for a version 3 file the footer frame's
// own checksum (a reader loads only the end of such a footer), for older
// ones the CRC-32C of the footer bytes.
func footerEntry(s *segment, f *wal.Footer) manifestEntry {
	e := manifestEntry{base: s.base, next: f.Next, dataEnd: f.Pos, size: f.End, sealedAt: f.Time, crc: f.Checksum}
	if !s.recordIndexed() {
		e.crc = crc32.Checksum(f.Data, castagnoli)
	}
	if sm := s.sum.Load(); sm != nil && len(sm.first) > 0 {
		e.firstTime = sm.first[0].time
	} else if len(s.index) > 0 {
		e.firstTime = s.index[0].time
	}
	return e
}

func encodeManifest(entries []manifestEntry, clean *cleanEnd) []byte {
	b := make([]byte, 8+manifestEntryLen*len(entries), 8+manifestEntryLen*len(entries)+cleanLen)
	binary.LittleEndian.PutUint32(b, uint32(len(entries)))
	for i, e := range entries {
		p := b[8+i*manifestEntryLen:]
		binary.LittleEndian.PutUint64(p[0:], e.base)
		binary.LittleEndian.PutUint64(p[8:], e.next)
		binary.LittleEndian.PutUint64(p[16:], uint64(e.dataEnd))
		binary.LittleEndian.PutUint64(p[24:], uint64(e.size))
		binary.LittleEndian.PutUint64(p[32:], uint64(e.sealedAt))
		binary.LittleEndian.PutUint64(p[40:], uint64(e.firstTime))
		binary.LittleEndian.PutUint32(p[48:], e.crc)
	}
	if clean != nil {
		b = append(b, clean2Magic...)
		b = binary.LittleEndian.AppendUint64(b, clean.base)
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.end))
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.size))
		b = binary.LittleEndian.AppendUint64(b, clean.next)
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.lastTime))
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.lastRec))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(clean.index)))
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = append(b, clean.index...)
	}
	return b
}

func decodeManifest(b []byte) (map[uint64]manifestEntry, *cleanEnd, error) {
	if len(b) < 8 {
		return nil, nil, errors.New("manifest shorter than its header")
	}
	n := int(binary.LittleEndian.Uint32(b))
	var clean *cleanEnd
	if n > (len(b)-8)/manifestEntryLen {
		return nil, nil, fmt.Errorf("manifest claims %d entries in %d bytes", n, len(b))
	}
	tail := b[8+n*manifestEntryLen:]
	switch {
	case len(tail) == 0:
	case len(tail) == cleanLen && string(tail[:8]) == cleanMagic:
		c := tail[8:]
		clean = &cleanEnd{base: binary.LittleEndian.Uint64(c), end: int64(binary.LittleEndian.Uint64(c[8:])), size: int64(binary.LittleEndian.Uint64(c[16:]))}
	case len(tail) >= clean2Len && string(tail[:8]) == clean2Magic:
		c := tail[8:]
		clean = &cleanEnd{base: binary.LittleEndian.Uint64(c), end: int64(binary.LittleEndian.Uint64(c[8:])), size: int64(binary.LittleEndian.Uint64(c[16:])),
			next: binary.LittleEndian.Uint64(c[24:]), lastTime: int64(binary.LittleEndian.Uint64(c[32:])), lastRec: int64(binary.LittleEndian.Uint64(c[40:]))}
		if k := int64(binary.LittleEndian.Uint32(c[48:])); k == 0 || k != int64(len(tail)-clean2Len) || binary.LittleEndian.Uint32(c[52:]) != 0 {
			return nil, nil, fmt.Errorf("manifest's clean close record claims %d index bytes in %d", k, len(tail)-clean2Len)
		}
		clean.index = tail[clean2Len:]
		if clean.end < wal.DataStart || clean.size < clean.end || clean.next < clean.base || clean.lastRec < 0 || clean.lastRec >= clean.end {
			return nil, nil, fmt.Errorf("manifest's clean close record (segment %d, end %d, size %d, next %d) is out of range", clean.base, clean.end, clean.size, clean.next)
		}
	default:
		return nil, nil, fmt.Errorf("manifest claims %d entries in %d bytes", n, len(b))
	}
	m := make(map[uint64]manifestEntry, n)
	for i := range n {
		p := b[8+i*manifestEntryLen:]
		e := manifestEntry{
			base: binary.LittleEndian.Uint64(p[0:]), next: binary.LittleEndian.Uint64(p[8:]),
			dataEnd: int64(binary.LittleEndian.Uint64(p[16:])), size: int64(binary.LittleEndian.Uint64(p[24:])),
			sealedAt: int64(binary.LittleEndian.Uint64(p[32:])), firstTime: int64(binary.LittleEndian.Uint64(p[40:])),
			crc: binary.LittleEndian.Uint32(p[48:]),
		}
		if e.next <= e.base || e.dataEnd < wal.DataStart || e.size <= e.dataEnd {
			return nil, nil, fmt.Errorf("manifest entry %d (segment %d) is out of range", i, e.base)
		}
		m[e.base] = e
	}
	return m, clean, nil
}

// readManifest returns the manifest's entries by base, the clean close
// record and the manifest's bytes, or nils if there is none or it cannot
// be used (then every segment is opened eagerly, and a damaged manifest is
// reported: it is only a shortcut, nothing is lost).
func (l *Log) readManifest() (map[uint64]manifestEntry, *cleanEnd, []byte) {
	b, err := readMeta(l.dir, manifestName, metaManifest)
	if err == nil {
		m, clean, err := decodeManifest(b)
		if err == nil {
			return m, clean, b
		}
		l.opts.Logger.Warn("segstore: manifest unusable, opening every segment's footer instead",
			"file", filepath.Join(l.dir.Path(), manifestName), "err", err)
		return nil, nil, nil
	}
	if !isNotExist(err) {
		l.opts.Logger.Warn("segstore: manifest unusable, opening every segment's footer instead",
			"file", filepath.Join(l.dir.Path(), manifestName), "err", err)
	}
	return nil, nil, nil
}

// manifest encodes the manifest of the current sealed segments (those
// with a trustworthy footer on disk), with no clean close record.
func (l *Log) manifest() []byte { return encodeManifest(l.manifestEntries(), nil) }

func (l *Log) manifestEntries() []manifestEntry {
	var entries []manifestEntry
	for _, s := range *l.segs.Load() {
		s.mu.RLock()
		e := s.man
		s.mu.RUnlock()
		if e.next != 0 && !s.footerBad.Load() {
			entries = append(entries, e)
		}
	}
	return entries
}

// writeManifest writes the manifest; with syncDir false its commit point is
// the caller's next directory fsync.
func (l *Log) writeManifest(syncDir bool) error {
	l.manifestMu.Lock()
	defer l.manifestMu.Unlock()
	return l.putManifestLocked(l.manifest(), syncDir)
}

// putManifestLocked writes b as the manifest and counts the write (an
// open compares the manifest it read with what it found only if nothing
// rewrote it since). The caller holds l.manifestMu.
func (l *Log) putManifestLocked(b []byte, syncDir bool) error {
	l.manifestWrites.Add(1)
	return writeMeta(l.dir, manifestName, metaManifest, b, syncDir)
}

// lazySegment is a sealed segment known from its manifest entry; its file
// is opened on first use (Log.ensure).
func (l *Log) lazySegment(e manifestEntry) *segment {
	s := l.newSegment(e.base, nil)
	s.man, s.sealed, s.sealedAt = e, true, e.sealedAt
	s.visible.Store(&position{pos: e.dataEnd, off: e.next})
	return s
}

// ensure opens a lazily loaded segment's file and checks its footer
// against the manifest entry it was trusted through. The caller holds a
// reference on s.
func (l *Log) ensure(s *segment) error {
	if s.loaded.Load() {
		if !s.used.Load() {
			s.used.Store(true)
		}
		return nil
	}
	loaded, err := l.load1(s)
	if loaded {
		l.noteOpen(s)
	}
	return err
}

// load1 is ensure's load of s, under s.loadMu; it reports whether it
// loaded s (false if another goroutine did, or on an error).
func (l *Log) load1(s *segment) (bool, error) {
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	if s.loaded.Load() {
		return false, nil
	}
	wasBad := s.footerBad.Load() // found at an earlier load (this one is a reload)
	t, err := l.openSegment(s.base, false, s.man.next, true)
	if err == nil {
		err = s.adopt(t)
	}
	if err != nil {
		if t != nil {
			t.release()
		}
		if s.gone.Load() {
			return false, fmt.Errorf("%w: segment %s was dropped while being opened", ErrOutOfRange, s.name)
		}
		if l.opts.ReadOnly && isNotExist(err) {
			return false, fmt.Errorf("%w: segment %s was removed by the log's writer (truncated): %w", ErrOutOfRange, s.path, err)
		}
		if l.opts.ReadOnly && l.rewrittenAfter(s) {
			// The file under the name is not the sealed one this log
			// trusted, and the writer has rewritten the end since: its
			// rewrite (TruncateBack), or a new segment under a dropped
			// one's name, not damage.
			return false, fmt.Errorf("%w: segment %s is not the file this read-only log trusted: reopen", ErrRewritten, s.path)
		}
		return false, err
	}
	if !wasBad && s.footerBad.Load() && !l.opts.ReadOnly {
		// Out of the manifest, the next open reads the file and rebuilds
		// its footer on disk.
		if err := l.writeManifest(true); err != nil {
			l.opts.Logger.Warn("segstore: could not drop a damaged footer from the manifest", "segment", s.path, "err", err)
		}
	}
	return true, nil
}

// adopt takes the file and index of t, the same segment opened from its
// file, if t agrees with what s was trusted as.
func (s *segment) adopt(t *segment) error {
	got, want := t.vis(), s.vis()
	if got != want || (t.man.next != 0 && t.man != s.man) {
		return s.corrupt("open", got.pos, fmt.Errorf(
			"the file's footer (records end at %d, next offset %d, checksum %08x) disagrees with the manifest (%d, %d, %08x): the file changed after it was sealed; it was left as is, run segtool verify",
			got.pos, got.off, t.man.crc, want.pos, want.off, s.man.crc))
	}
	if t.man.next == 0 {
		// Damaged footer: served from an index rebuilt in memory; leaving it
		// out of the next manifest makes the next open rebuild it on disk.
		s.footerBad.Store(true)
	}
	t.mu.RLock()
	index, interval := t.index, t.interval.Load()
	t.mu.RUnlock()
	s.mu.Lock()
	s.index = index
	s.interval.Store(interval)
	s.sum.Store(t.sum.Load())
	s.mu.Unlock()
	s.dev, s.hdr = t.dev, t.hdr
	s.loaded.Store(true)
	return nil
}
