package engine

import (
	"fmt"
	"hash/crc32"
	"path/filepath"

	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/wal"
)

// The manifest lists what the sealed segments' footers say, so Open can
// trust a sealed segment without opening its file: the file is opened and
// its footer checked against the entry on first use (lazy loading, as
// Kafka loads the indexes of old segments). Open's cost is then a
// directory listing and one small read whatever the number of segments.
//
// MANIFEST is a metadata file (see meta.go) of kind metaManifest whose
// payload is layout's (layout.EncodeManifest): an entry per sealed
// segment, then, after a clean Close, one record about the last segment,
// which the first change after the next open removes (rewriting the
// manifest, durably) before anything is written. An open that finds that
// segment's file of the size the record says, with zeros after its end
// in the end's block, takes its end, last time and index from the record
// and reads none of its records (Recovery.CleanIndex). The commit point
// that keeps this true is the manifest rewrite without the record that
// the first change after the open makes, durably, before it writes
// anything (dropCleanRecord): a crash after a write never finds the
// record. A manifest written by an earlier version ends in a shorter
// record (base, end, size): the open then scans the last segment's
// frames up to end, but not the preallocated zeros after it (wal
// TrustCleanEnd).
//
// It is rewritten whole at every roll, before the directory fsync that
// commits the new segment, so a sealed segment is never followed by a
// newer segment while the manifest holds an older description of it. An
// entry is only trusted for a segment that is not the last file and whose
// next offset is the next file's base; anything else is opened eagerly.
// A stale or missing manifest therefore costs time, never correctness.
const (
	manifestName = "MANIFEST"
	metaManifest = layout.KindManifest
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
	if sm := s.sum.Load(); sm != nil && len(sm.First) > 0 {
		e.firstTime = sm.First[0].Time
	} else if len(s.index) > 0 {
		e.firstTime = s.index[0].time
	}
	return e
}

func encodeManifest(entries []manifestEntry, clean *cleanEnd) []byte {
	es := make([]layout.ManifestEntry, len(entries))
	for i, e := range entries {
		es[i] = layout.ManifestEntry{Base: e.base, Next: e.next, DataEnd: e.dataEnd, Size: e.size, SealedAt: e.sealedAt, FirstTime: e.firstTime, Checksum: e.crc}
	}
	var c *layout.CleanEnd
	if clean != nil {
		// Always the current record: an earlier version's one read back
		// (index nil) encodes as a record that differs from the bytes
		// read, so an open that found one writes the manifest anew.
		c = &layout.CleanEnd{Base: clean.base, End: clean.end, Size: clean.size, Next: clean.next,
			LastTime: clean.lastTime, LastRec: clean.lastRec, Index: clean.index}
	}
	return layout.EncodeManifest(es, c)
}

// decodeManifest returns a manifest payload's entries by base (of two for
// one base, the later) and its clean close record.
func decodeManifest(b []byte) (map[uint64]manifestEntry, *cleanEnd, error) {
	lm, err := layout.DecodeManifest(b)
	if err != nil {
		return nil, nil, err
	}
	var clean *cleanEnd
	if c := lm.Clean; c != nil {
		clean = &cleanEnd{base: c.Base, end: c.End, size: c.Size}
		if !c.Earlier {
			clean.next, clean.lastTime, clean.lastRec, clean.index = c.Next, c.LastTime, c.LastRec, c.Index
		}
	}
	m := make(map[uint64]manifestEntry, len(lm.Entries))
	for _, e := range lm.Entries {
		m[e.Base] = manifestEntry{base: e.Base, next: e.Next, dataEnd: e.DataEnd, size: e.Size, sealedAt: e.SealedAt, firstTime: e.FirstTime, crc: e.Checksum}
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
