package engine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/wal"
)

// segSuffix ends every segment file name; the rest is the base offset in
// 20 decimal digits, so names sort in offset order.
const segSuffix = ".seg"

func segName(base uint64) string { return fmt.Sprintf("%020d%s", base, segSuffix) }

// ParseSegmentName returns the base offset of a segment file name (20
// decimal digits and ".seg"), and whether name is one.
func ParseSegmentName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(digits) != 20 {
		return 0, false
	}
	base, err := strconv.ParseUint(digits, 10, 64)
	return base, err == nil
}

// segmentBases returns the base offsets of the segment files among names,
// in order.
func segmentBases(names []string) []uint64 {
	var bases []uint64
	for _, n := range names {
		if b, ok := ParseSegmentName(n); ok {
			bases = append(bases, b)
		}
	}
	slices.Sort(bases)
	return bases
}

// indexEntry marks the record at offset off, whose header is at position
// pos, in a frame stamped time. In a segment of version 3 (record
// granular, see index.go) back is the distance back to its frame's start,
// before the records of that frame before it and left the records of it
// from this one on; in older segments an entry marks a frame (pos is the
// frame's, back and before are 0, left is unknown: 0).
type indexEntry struct {
	off    uint64
	pos    int64
	time   int64
	back   uint32
	before uint32
	left   uint32
}

// layout is e in the footer codec's form.
func (e indexEntry) layout() layout.IndexEntry {
	return layout.IndexEntry{Off: e.off, Pos: e.pos, Time: e.time, Back: e.back, Before: e.before, Left: e.left}
}

// fromLayoutEntry is the footer codec's entry e as the engine keeps it.
func fromLayoutEntry(e layout.IndexEntry) indexEntry {
	return indexEntry{off: e.Off, pos: e.Pos, time: e.Time, back: e.Back, before: e.Before, left: e.Left}
}

// fromLayout is the footer codec's entries as the engine keeps them (nil
// for nil).
func fromLayout(es []layout.IndexEntry) []indexEntry {
	if es == nil {
		return nil
	}
	out := make([]indexEntry, len(es))
	for i, e := range es {
		out[i] = fromLayoutEntry(e)
	}
	return out
}

// position is a (file position, record offset) pair that belong together.
type position struct {
	pos int64
	off uint64
}

// segment is one file of the log. A sealed segment is immutable; the
// active one (w != nil) grows, and readers see it up to visible.
type segment struct {
	base uint64
	name string // file name
	path string // file path, for errors
	dev  blockdev.Device
	hdr  wal.FileHeader
	ns   cache.Namespace

	visible atomic.Pointer[position] // readers see records below it
	// w is the active segment's writer; nil once sealed or truncated away
	// (a closed log's active segment keeps its closed writer).
	//
	// Guarded by Log.mu while s is the active segment: cleared only with
	// Log.mu held exclusively (and Log.changeMu: fail, TruncateBack,
	// makeRoomFor), and read only with Log.mu held, shared or exclusive,
	// through Log.active (s.w is then not nil). A goroutine that let go of
	// Log.mu must not touch w: a roll or TruncateBack may have cleared it.
	//
	// Guarded by Log.statsMu once a roll's cut has retired s (made it
	// Log.retiring, under Log.mu held exclusively): Log.mu no longer
	// guards w, only that roll uses it, holding Log.changeMu, and clears it
	// under Log.statsMu, its seal together with Log.retiring (failAfterRoll
	// holding Log.mu too); Stats reads it through Log.retiring under
	// Log.statsMu.
	//
	// Set only before s is shared (createSegment, an import's
	// commitActive) or while opening, which also seals the segments before
	// the last and clears w of all of them when it fails (abandon).
	w *wal.Writer
	// retired: a roll made the next segment the active one; s takes no
	// more appends and its records end at visible, but its seal may not be
	// done yet (iterators move on from its end all the same).
	retired atomic.Bool
	// refs: 1 for the segment's owner (the log's segment list, or whoever
	// is building it), plus userRef per reader using the file (acquire,
	// done). The device is closed when it drops to zero, so a segment
	// dropped by truncation or retention stays readable for readers that
	// hold it. While the log's open-file bound closes the file of a sealed
	// segment nobody uses (unload), refs is below unloading/2 and acquire
	// waits for it.
	refs atomic.Int64
	// gone: dropped or replaced by a rewritten file; an iterator holding it
	// looks its position up again.
	gone atomic.Bool

	// A sealed segment trusted through the manifest is loaded lazily: until
	// loaded is set (by Log.ensure, under loadMu), dev, hdr and index are
	// unset and man holds what it was trusted as. Eagerly opened segments
	// are loaded from the start. man is also what the next manifest says
	// about a sealed segment (zero while active, or if its footer is damaged).
	// A loaded sealed segment is unloaded again (its file closed, its index
	// dropped) when the log holds more open files than Options.MaxOpenSegments
	// and nobody uses it: see openFiles.
	loadMu    sync.Mutex
	loaded    atomic.Bool
	used      atomic.Bool // used since the open-file bound last looked (its clock bit)
	inFiles   bool        // in the log's openFiles; guarded by openFiles.mu
	man       manifestEntry
	footerBad atomic.Bool // footer found damaged on a lazy load; kept out of the manifest

	// looked: the file's modification time at the last Refresh that read
	// it, and when that look started (read-only logs; under followed.mu).
	looked struct{ mod, at time.Time }

	// sum: for a sealed segment of version 3 whose footer is sound, the
	// footer's summary; its index entries stay on disk, read a block at a
	// time through the cache (sealedindex.go), and index is nil. Set when
	// the footer is loaded or written, cleared by unload.
	sum atomic.Pointer[footerSummary]

	mu    sync.RWMutex // guards index, lastRec, sealed and sealedAt
	index []indexEntry // sparse, ascending; the first frame (record) is always in it
	// interval is the index's spacing: atomic, as point reads read it
	// without mu while a follower's Refresh loads the footer of a segment
	// that was sealed (a thinned footer's interval is wider).
	interval atomic.Int64
	lastRec  int64 // position of the last record indexed (version 3)
	sealed   bool
	sealedAt int64 // unix nanoseconds, from the footer frame
}

// lastTime is when the segment's last record was appended, at the latest:
// its seal time, or for the active segment the newest index entry's time.
func (s *segment) lastTime() int64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.sealed {
		return s.sealedAt
	}
	if len(s.index) == 0 {
		return 0
	}
	return s.index[len(s.index)-1].time
}

func (s *segment) vis() position { return *s.visible.Load() }

// hideFrom makes s end at p for readers, dropping index entries at or
// past it: what a read-only log does with frames its writer (another
// process) has written but not acknowledged yet.
func (s *segment) hideFrom(p position) {
	s.mu.Lock()
	s.index = s.index[:sort.Search(len(s.index), func(i int) bool { return s.index[i].pos >= p.pos })]
	s.mu.Unlock()
	s.visible.Store(&p)
}

func (s *segment) isSealed() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sealed
}

// fileSize is the segment file's size: for a sealed segment, where its
// footer ends (as the manifest or the footer says; a read-only log can see
// a file whose seal a crash interrupted, its footer followed by zeros that
// are no part of it), without touching the file, which may be closed;
// otherwise the file's size.
func (s *segment) fileSize() int64 {
	s.mu.RLock()
	size := s.man.size // zero unless sealed with a sound footer
	s.mu.RUnlock()
	if size > 0 || !s.acquire() {
		return size
	}
	defer s.done()
	if s.loaded.Load() {
		size, _ = s.dev.Size()
	}
	return size
}

// storedBytes is what the segment holds on disk: a sealed file's size, and
// for the active segment what is written of it (its file is preallocated).
func (s *segment) storedBytes() int64 {
	if s.isSealed() {
		return s.fileSize()
	}
	return s.vis().pos
}

// corrupt reports damage in s at pos, naming the file by its path.
func (s *segment) corrupt(op string, pos int64, err error) *CorruptionError {
	return &CorruptionError{Segment: s.base, File: s.path, Position: pos, Op: op, Err: err}
}

const (
	// userRef is one reader's share of refs; the owner's is 1.
	userRef = 1 << 32
	// unloading is added to refs while unload closes the file.
	unloading = -1 << 62
)

// acquire takes a reader's reference (drop it with done), unless the
// segment is already released. A segment whose file is being closed by
// the open-file bound is waited for; the caller then loads it again
// (Log.ensure).
func (s *segment) acquire() bool {
	for {
		r := s.refs.Load()
		if r < unloading/2 {
			s.loadMu.Lock() // held by unload until refs is restored
			s.loadMu.Unlock()
			continue
		}
		if r <= 0 {
			return false
		}
		if s.refs.CompareAndSwap(r, r+userRef) {
			return true
		}
	}
}

// done drops a reference taken by acquire.
func (s *segment) done() { s.drop(userRef) }

// release drops the owner's reference (the log's segment list's, or the
// one newSegment gave whoever builds the segment).
func (s *segment) release() { s.drop(1) }

// drop takes n off refs and closes the device with the last reference.
func (s *segment) drop(n int64) {
	if s.refs.Add(-n) == 0 && s.loaded.Load() {
		s.dev.Close()
	}
}

// unload closes the file of a loaded sealed segment and drops its index,
// if nothing but its owner holds it and nobody is loading it; its next
// use loads it again from its manifest entry (Log.ensure). It reports
// whether the segment is unloaded.
func (s *segment) unload() bool {
	if !s.loadMu.TryLock() {
		return false
	}
	defer s.loadMu.Unlock()
	if !s.loaded.Load() {
		return true
	}
	if !s.refs.CompareAndSwap(1, unloading) {
		return false // in use (or already released)
	}
	s.loaded.Store(false)
	s.mu.Lock()
	s.index = nil
	s.sum.Store(nil)
	s.mu.Unlock()
	s.dev.Close()
	s.dev = nil
	// The owner may have released s meanwhile: refs is then 0, and the
	// device is closed already.
	s.refs.Add(1 - unloading)
	return true
}

// reloadable reports whether s can be unloaded and loaded again: sealed,
// with a description (its footer's, or the manifest's) to check its file
// against. A read-only log's segment with a damaged footer has none.
func (s *segment) reloadable() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.sealed && s.man.next != 0
}

// addIndex records a frame if it starts a new index interval. Called in
// file order (wal OnReserve, or a scan).
func (s *segment) addIndex(first uint64, pos, ts int64) {
	s.mu.Lock()
	if n := len(s.index); n == 0 || pos >= s.index[n-1].pos+s.interval.Load() {
		s.index = append(s.index, indexEntry{off: first, pos: pos, time: ts})
	}
	s.mu.Unlock()
}

// footerFits is how many index entries s's footer holds in a footer frame
// of at most batch payload bytes.
func (s *segment) footerFits(batch int) int {
	if s.recordIndexed() {
		return layout.FooterV2Fits(batch)
	}
	return layout.FooterV1Fits(batch)
}

// encodeFooter encodes s's footer (version 2 for a file of version 3,
// else version 1) with at most fit index entries. An
// index with more is thinned: every stride-th entry is kept (the first
// frame's among them) and the interval recorded is stride times wider, so
// a seal never fails for want of room; it returns the stride. Open's
// option checks and Append's roll leave that to a segment that more than
// footerSpare appends in flight together overfilled.
func (s *segment) encodeFooter(next uint64, dataEnd int64, fit int) (footer []byte, stride int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	fit = max(fit, 1)
	stride = (len(s.index) + fit - 1) / fit
	stride = max(stride, 1)
	n := (len(s.index) + stride - 1) / stride
	kept := make([]layout.IndexEntry, n)
	for i := range kept {
		kept[i] = s.index[i*stride].layout()
	}
	interval := s.interval.Load() * int64(stride)
	if s.recordIndexed() {
		return layout.EncodeFooterV2(s.hdr.SegmentID, s.base, next-s.base, dataEnd, interval, kept), stride
	}
	return layout.EncodeFooterV1(next-s.base, dataEnd, interval, kept), stride
}

// decodeFooter checks a footer against the wal footer frame it came in and
// loads the index. Entries must ascend inside the segment's record range.
// A version 2 footer's entries are checked, block by block, and only its
// summary is kept (sealedindex.go).
func (s *segment) decodeFooter(f *wal.Footer) error {
	var index []indexEntry
	var sum *footerSummary
	interval := int64(0)
	var err error
	if s.recordIndexed() {
		if sum, err = layout.WalkFooterV2(f.Data, s.hdr.SegmentID, s.base, f.Next, f.Pos, nil); err == nil {
			interval = sum.Interval
		}
	} else {
		index, interval, err = footerIndex(s.hdr, s.base, f)
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.index, s.sealed, s.sealedAt = index, true, f.Time
	s.interval.Store(interval)
	s.sum.Store(sum)
	s.man = footerEntry(s, f)
	s.mu.Unlock()
	s.visible.Store(&position{pos: f.Pos, off: f.Next})
	return nil
}

// footerIndex checks the footer f of the segment file whose header is hdr
// and whose first offset is base, and returns its index: a version 2
// footer in a file of version 3, version 1 in older ones. A sealed footer
// and the manifest's clean close record (encodeFooter's bytes for the
// active segment) both go through here.
func footerIndex(hdr wal.FileHeader, base uint64, f *wal.Footer) ([]indexEntry, int64, error) {
	if hdr.Version >= 3 {
		// The wal pads the footer to 8 bytes; a version 2 footer is a
		// multiple of 8 already.
		index, interval, err := layout.DecodeFooterV2(f.Data, hdr.SegmentID, base, f.Next, f.Pos)
		if err != nil {
			return nil, 0, err
		}
		return fromLayout(index), interval, nil
	}
	v1, err := layout.DecodeFooterV1(f.Data, base, f.Next, f.Pos)
	if err != nil {
		return nil, 0, err
	}
	return fromLayout(v1.Entries), v1.Interval, nil
}

// readRange reads the file bytes [from, to) with one aligned O_DIRECT read
// into buf (or a new aligned buffer if buf is too small) and returns them,
// and the aligned buffer they sit in (to reuse).
func (s *segment) readRange(from, to int64, buf []byte) (data, aligned []byte, err error) {
	// Whole device blocks: reads that start inside a 4 KiB physical block
	// measured slower here than block-aligned ones.
	a := s.dev.Alignment()
	start := alignedbuf.AlignDown(from, int64(a.Block))
	end := alignedbuf.AlignUp(to, int64(a.Block))
	if int64(len(buf)) < end-start {
		buf = a.Alloc(int(end - start))
	}
	buf = buf[:end-start]
	n, err := s.dev.ReadAt(buf, start)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("engine: read segment %d (%s) bytes [%d, %d): %w", s.base, s.path, start, end, err)
	}
	if int64(n) < to-start {
		return nil, nil, s.corrupt("read", start+int64(n), fmt.Errorf("file ends at %d, records were acknowledged up to %d", start+int64(n), to))
	}
	return buf[from-start : to-start], buf[:n], nil // aligned: the bytes read (fewer at the end of the file)
}

// tailChunk is a chunk of a segment's growing last interval, starting at
// pos; ns names the segment's file. v is the cache value holding it, used
// through v.Acquire(id) (it holds the log's reference until replaced).
type tailChunk struct {
	ns  cache.Namespace
	pos int64
	v   *cache.Value
	id  uint64
}

// chunk is a run of verified records as the cache holds it: the file bytes
// they came in, then where each record's bytes start and how long they
// are, so a point read finds its record in O(1) instead of walking the
// record headers (a chain of cache misses, measured at 60% of a warm
// read), then how many records of the last record's frame follow the run
// (0 when the run ends with its frame), so that reading on from its end
// (read-ahead) knows where the next frame header is:
//
//	+------------- - - -+-------------------------------------------+----------+----------+
//	| file bytes        | count × (record start u32 | length u32)   | left u32 | count u32|
//	+------------- - - -+-------------------------------------------+----------+----------+
//
// Record k holds offset start.off + k, where start is the index entry the
// run begins at (for a segment of version 3, a record; else a frame);
// starts are relative to the chunk, and the file bytes end where the run
// does. A chunk is never changed once built.
type chunk []byte

// chunkTrailer is a chunk's fixed tail: left and count.
const chunkTrailer = 8

// newChunk lays out the records of raw that table lists (start, length
// pairs, relative to raw) as a chunk in a value from alloc (the caller's
// to release), with left records of the last one's frame after it.
func newChunk(raw []byte, table []uint32, left uint32, alloc func(int) *cache.Value) *cache.Value {
	n := len(raw)
	v := alloc(n + 4*len(table) + chunkTrailer)
	c := v.Bytes()
	copy(c, raw)
	for i, t := range table {
		binary.LittleEndian.PutUint32(c[n+4*i:], t)
	}
	binary.LittleEndian.PutUint32(c[len(c)-8:], left)
	binary.LittleEndian.PutUint32(c[len(c)-4:], uint32(len(table)/2))
	return v
}

// buildChunk verifies the frames in raw (file bytes from start.pos, a
// frame's position) and lays them out as a chunk in a value from alloc
// (the caller's to release), returning where the frames stopped.
func buildChunk(raw []byte, hdr wal.FileHeader, start indexEntry, alloc func(int) *cache.Value) (*cache.Value, int64, error) {
	var table []uint32
	hl := hdr.RecordHeaderLen()
	stop, _, err := wal.DecodeFrames(raw, hdr, start.pos, start.off, func(f wal.Frame) bool {
		p := uint32(f.Pos-start.pos) + wal.FrameHeaderLen
		wal.Records(hdr.Version, f.Payload, func(_ int, rec []byte) bool {
			table = append(table, p+uint32(hl), uint32(len(rec)))
			p += uint32(hl + len(rec))
			return true
		})
		return true
	})
	if err != nil {
		return nil, stop, err
	}
	return newChunk(raw[:stop-start.pos], table, 0, alloc), stop, nil
}

// count is how many records the chunk holds.
func (c chunk) count() int { return int(binary.LittleEndian.Uint32(c[len(c)-4:])) }

// left is how many records of its last record's frame follow the run.
func (c chunk) left() uint32 { return binary.LittleEndian.Uint32(c[len(c)-8:]) }

// span is how many file bytes the run covers: it ends at its start plus
// span.
func (c chunk) span() int64 { return int64(len(c) - chunkTrailer - 8*c.count()) }

// record returns record k of the chunk.
func (c chunk) record(k uint64) ([]byte, bool) {
	n := uint64(c.count())
	if k >= n {
		return nil, false
	}
	t := len(c) - chunkTrailer - 8*int(n) + 8*int(k)
	p := int(binary.LittleEndian.Uint32(c[t:]))
	l := int(binary.LittleEndian.Uint32(c[t+4:]))
	return c[p : p+l], true
}
