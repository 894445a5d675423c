package engine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

// openParallelism is how many sealed segments Open reads at once: their
// footers are small reads, which the device serves much faster at queue
// depth than one after another (measured here: 10k IOPS at QD1, 76k at QD16).
const openParallelism = 16

// Recovery is what the last Open found and did.
type Recovery struct {
	Segments int // segment files in the log
	Sealed   int // of them sealed, trusted through their footer (read at open)
	// Deferred: of them sealed, trusted through the manifest; each one's
	// footer is read and checked against it on first use.
	Deferred int
	Resealed []uint64 // unsealed segments before the last one, sealed on open
	// FinishedSeals: sealed segments whose seal a crash stopped after the
	// footer was durable and before the file was cut to end at it (the
	// footer followed by zeros); open cut them.
	FinishedSeals  []uint64
	RebuiltFooters []uint64 // segments whose damaged footer was rebuilt from their records
	// RemovedIncomplete: a last segment file whose creation a crash
	// interrupted (no header, all zeros), removed.
	RemovedIncomplete []uint64
	ActiveFrames      int           // frames scanned in the active segment
	Torn              *wal.TornTail // torn tail cut from the active segment
	ActiveScan        time.Duration // of Duration, opening the last segment (a scan unless sealed)
	// ActiveRead: device bytes the scan of the active segment read (its
	// frames, and the proof that nothing follows them, which reads up to
	// its high-water mark); 0 when it was opened from a clean close record.
	ActiveRead int64
	// CleanEnd: the last segment was closed cleanly, so its preallocated
	// tail was not read to prove it empty. CleanIndex: moreover its index
	// and end came from the clean close record, so none of its records
	// were read (ActiveFrames is 0): open read no segment data beyond the
	// last segment's header, its footer probe and its end's block.
	CleanEnd, CleanIndex bool
	Duration             time.Duration
}

// Open opens the log in dir, creating dir (but not its parents: a
// missing parent is refused) unless opts.ReadOnly.
//
// A read-only open lists the directory and then opens the files listed,
// while the writer beside it may roll, retain and truncate back (which
// removes files and renames a rewritten one over its name). A file gone
// since the listing, or one rewritten so that it no longer reaches the
// next one listed, fails the attempt; if the listing is not the same after
// the failure as before the attempt, a writer changed the directory under
// it, so the open starts again (up to readOnlyOpenTries attempts) instead
// of reporting the writer's change as damage. So it does when a file the
// writer's acknowledged end bounds was removed or replaced after the
// attempt opened it (the names listed are then the same): that end, read
// after the files, describes the new file. Damage is reported from a
// listing that stood still across the attempt.
func Open(dir string, opts Options) (*Log, error) {
	if !opts.ReadOnly {
		return open(dir, opts)
	}
	for try := 1; ; try++ {
		before, lerr := listNames(dir, opts)
		l, err := open(dir, opts)
		if err == nil || lerr != nil {
			return l, err
		}
		// A rewrite renamed over a file the attempt read changes the
		// directory without changing its names.
		if after, lerr := listNames(dir, opts); lerr != nil || (slices.Equal(before, after) && !errors.Is(err, ErrRewritten)) {
			return nil, err
		}
		if try == readOnlyOpenTries {
			return nil, fmt.Errorf("%w (%s)", err, churnAdvice(dir, opts, try))
		}
	}
}

// churnAdvice says who changed dir during each of the tries of a
// read-only open, and what to do: a live writer is waited out; without
// one, something else is changing the store's files.
func churnAdvice(dir string, opts Options, tries int) string {
	d := opts.Dir
	if d == nil {
		if od, err := blockdev.OpenExistingDir(dir, opts.Buffered); err == nil {
			d = od
		}
	}
	if d != nil && writerLive(capsOf(d)) {
		return fmt.Sprintf("the log's writer changed %s during each of %d attempts to open it read-only: open it again once the writer pauses", dir, tries)
	}
	return fmt.Sprintf("%s changed during each of %d attempts to open it read-only, and no writer held its lock after the last one (one may have stopped just then): stop whatever else changes the files there (a copy, a repair, another program) and open it again", dir, tries)
}

// readOnlyOpenHook, set by tests only (and only while no other test opens
// a log), runs at named steps of each attempt of a read-only open:
// "listed" (the directory is listed, no segment file opened yet) and
// "loaded" (every file listed is opened and the last one scanned; the
// writer's DURABLE words are read next).
var readOnlyOpenHook func(step string)

// openStep runs readOnlyOpenHook at a step of a read-only open.
func (l *Log) openStep(step string) {
	if l.openedReadOnly() && readOnlyOpenHook != nil {
		readOnlyOpenHook(step)
	}
}

// readOnlyOpenTries bounds the attempts of a read-only open whose listing
// a writer keeps changing. Each failed attempt overlapped a step of a
// change (a file removed, a rewrite renamed into place), and the writer
// takes a few of them per truncation, so a writer that is not truncating
// without pause lets one of these succeed.
const readOnlyOpenTries = 32

// listNames lists the directory a read-only open reads.
func listNames(path string, opts Options) ([]string, error) {
	d := opts.Dir
	if d == nil {
		od, err := blockdev.OpenExistingDir(path, opts.Buffered)
		if err != nil {
			return nil, err
		}
		d = od
	}
	return d.List()
}

func open(dir string, opts Options) (*Log, error) {
	start := time.Now()
	opts, err := opts.resolve()
	if err != nil {
		return nil, err
	}
	l := &Log{opts: opts, dir: opts.Dir, durCh: make(chan struct{}), syncHist: newHist(syncBuckets), batchHist: newHist(batchBuckets)}
	initial := stateWritable
	if opts.ReadOnly {
		initial = stateReadOnly
	}
	l.state.Store(uint32(initial)) // before the log is shared: what Open's steps ask
	// One pool block holds an index interval plus a batch that starts at
	// its end; larger reads allocate.
	pool, err := alignedbuf.NewPool(int(alignedbuf.AlignUp(int64(2*opts.IndexInterval), 1<<16)), poolAlign)
	if err != nil {
		return nil, err
	}
	l.readPool = pool
	if l.raPool, err = alignedbuf.NewPool(raSpan+2*poolAlign, poolAlign); err != nil {
		return nil, err
	}
	l.ra.pool = l.raPool
	l.sealed.Store(&wal.Stats{})
	if l.dir == nil {
		open := blockdev.OpenDir
		if l.openedReadOnly() { // a read-only open creates nothing
			open = blockdev.OpenExistingDir
		}
		d, err := open(dir, opts.Buffered)
		if err != nil {
			return nil, err
		}
		l.dir = d
	}
	l.caps = capsOf(l.dir)
	// A writer locks every directory that can be locked (a
	// blockdev.Locker): the one Open opened, and an Options.Dir that is a
	// real or a simulated directory.
	if l.caps.lock != nil && !l.openedReadOnly() {
		if l.unlock, err = l.caps.lock.Lock(lockName); err != nil {
			return nil, err
		}
	}
	l.cache, l.ownCache = opts.Cache, opts.Cache == nil
	if l.ownCache {
		c, err := cache.New(opts.CacheBytes)
		if err != nil {
			l.release()
			return nil, err
		}
		l.cache = c
	}
	if !l.openedReadOnly() {
		l.fresh = newFresh(l.cache.MaxBytes())
	}
	if err := l.load(); err != nil {
		l.abandon()
		return nil, err
	}
	l.openStep("loaded")
	if err := l.openDurable(); err != nil {
		l.abandon()
		return nil, err
	}
	l.report.Duration = time.Since(start)
	opts.Logger.Debug("segstore: opened log", "dir", dir, "segments", l.report.Segments, "torn", l.report.Torn, "took", l.report.Duration)
	l.reportMu.Lock()
	l.reportFinal = true
	l.reportMu.Unlock()
	return l, nil
}

// abandon undoes a failed Open: it stops the writer of the last segment
// (opened or created before the failure, and not yet Log.active on every
// path; its flusher and ticker goroutines would run forever), the spare's
// preparation, and closes every file, the cache and the lock.
func (l *Log) abandon() {
	if p := l.segs.Load(); p != nil {
		for _, s := range *p {
			if s.w != nil {
				s.w.Close() // its error is the failed Open's, or follows from it
				s.w = nil
			}
		}
	}
	l.dropSpare()
	l.closeFiles()
	l.release()
}

func (l *Log) release() {
	if l.ownCache && l.cache != nil {
		l.cache.Close()
	}
	if l.unlock != nil {
		l.unlock()
	}
}

// load opens every segment: sealed ones through their footer, the last one
// by scanning (and cutting its torn tail). The steps: listSegments,
// openSegments (in parallel, then the last), chainSegments (the
// contiguity check), then, for a writer, makeActive and keepManifest.
func (l *Log) load() error {
	bases, err := l.listSegments()
	if err != nil {
		return err
	}
	var manifest map[uint64]manifestEntry
	var manifestBytes []byte // as read, to compare with what open found
	// clean: the manifest's clean close record. It describes the last
	// segment as the last Close left it, so only this load may trust it:
	// it is passed down, never kept on the log.
	var clean *cleanEnd
	if !l.opts.VerifyOnOpen {
		manifest, clean, manifestBytes = l.readManifest()
	}
	writes := l.manifestWrites.Load()
	segs, err := l.chainSegments(l.openSegments(bases, manifest, clean))
	l.publishLocked(segs)
	if err != nil {
		return err
	}
	l.report.Segments = len(segs)
	l.noteOpen(segs...)
	if err := l.loadStart(); err != nil {
		return err
	}
	if l.openedReadOnly() {
		return nil
	}
	if err := l.makeActive(segs); err != nil {
		return err
	}
	return l.keepManifest(manifestBytes, writes, clean)
}

// listSegments lists the bases of the segment files in order, and (for a
// writer) removes the files being written when the process stopped.
func (l *Log) listSegments() ([]uint64, error) {
	names, err := l.dir.List()
	if err != nil {
		return nil, err
	}
	l.openStep("listed")
	for _, n := range names {
		if strings.HasSuffix(n, tmpSuffix) && !l.openedReadOnly() {
			// A file being written when the process stopped (a truncation's
			// rewrite, a metadata update): never committed, so discarded.
			if err := l.dir.Remove(n); err != nil {
				return nil, err
			}
		}
	}
	return segmentBases(names), nil
}

// openedSegment is one file as openSegments opened it.
type openedSegment struct {
	s   *segment
	err error
}

// openSegments opens the segments at bases: the sealed ones through the
// manifest, or in parallel through their footers; then the last one
// (which may create or repair files) alone, if every other opened,
// from the clean close record clean if it describes that file.
func (l *Log) openSegments(bases []uint64, manifest map[uint64]manifestEntry, clean *cleanEnd) []openedSegment {
	results := make([]openedSegment, len(bases))
	var loaded atomic.Int64 // sealed segments opened here: those past the bound are closed again
	var wg sync.WaitGroup
	sem := make(chan struct{}, openParallelism)
	for i := 0; i < len(bases)-1; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			// Trusted through the manifest if the file is where the entry
			// says, ends at the next file's base and has the size it was
			// sealed with (a stat, much cheaper than reading the footer);
			// otherwise read and checked now.
			if e, ok := manifest[bases[i]]; ok && e.next == bases[i+1] {
				if size, err := l.dir.Size(segName(bases[i])); err == nil && size == e.size {
					results[i].s = l.lazySegment(e)
					l.noteReport(func(r *Recovery) { r.Deferred++ })
					return
				}
			}
			s, err := l.openSegment(bases[i], false, bases[i+1], false)
			if err == nil && s.reloadable() && loaded.Add(1) > int64(l.opts.MaxOpenSegments) {
				s.unload() // checked; opened again on first use
			}
			results[i].s, results[i].err = s, err
		}()
	}
	wg.Wait()
	sealedOK := !slices.ContainsFunc(results, func(r openedSegment) bool { return r.err != nil })
	if n := len(bases); n > 0 && sealedOK {
		t := time.Now()
		results[n-1].s, results[n-1].err = l.openSegmentFrom(clean, bases[n-1], true, 0, false)
		l.report.ActiveScan = time.Since(t)
	}
	return results
}

// chainSegments returns the opened segments in order, and the first
// error: of an open, or a segment that does not start where the one
// before it ends. Every opened segment is returned, error or not, so that
// the caller closes them all.
func (l *Log) chainSegments(results []openedSegment) ([]*segment, error) {
	var segs []*segment
	var firstErr error
	for _, r := range results {
		if r.s != nil {
			segs = append(segs, r.s)
		}
		if firstErr == nil && r.err != nil {
			firstErr = r.err
			if l.openedReadOnly() && isNotExist(r.err) {
				// Listed, then removed before it was opened: a live writer's
				// retention or truncation. A later open finds it gone.
				firstErr = fmt.Errorf("%w: a segment was removed by the log's writer (retention or a truncation) while this read-only open read the directory; open it again: %w", ErrOutOfRange, r.err)
			}
		}
		if firstErr != nil || r.s == nil {
			continue // keep collecting, so every opened file gets closed
		}
		if n := len(segs); n > 1 {
			if prev := segs[n-2].vis().off; prev != r.s.base {
				firstErr = r.s.corrupt("open", 0, fmt.Errorf("segment %s ends at offset %d but the next file starts at %d: a segment is missing or damaged", segs[n-2].name, prev, r.s.base))
			}
		}
	}
	return segs, firstErr
}

// makeActive makes the last segment the active one, creating it if there
// is none or the last is sealed, and checks that the segments it will
// roll to can be written with MaxWrite.
func (l *Log) makeActive(segs []*segment) error {
	if len(segs) == 0 || segs[len(segs)-1].w == nil {
		next := uint64(0)
		if len(segs) > 0 {
			next = segs[len(segs)-1].vis().off
		}
		s, err := l.createSegment(next, true)
		if err != nil {
			return err
		}
		l.pushLocked(s)
	} else {
		l.active = segs[len(segs)-1]
	}
	// The next segment is created with MaxWrite: a value its device cannot
	// write would fail that roll, long after this open.
	if blk := int64(l.active.dev.Alignment().Block); alignedbuf.AlignDown(int64(l.opts.MaxWrite), blk) < 4*blk {
		return &OptionError{Option: "MaxWrite", Value: sizeString(int64(l.opts.MaxWrite)),
			Problem: fmt.Sprintf("is too small for the device's block of %d bytes: use at least %s", blk, sizeString(4*blk))}
	}
	return nil
}

// keepManifest writes the manifest anew unless the one on disk (read as
// manifestBytes, before the open made writes of its own if the count
// moved from writes) already says what the open found, or that and the
// clean close record clean the open was made from.
func (l *Log) keepManifest(manifestBytes []byte, writes int64, clean *cleanEnd) error {
	current, err := manifestBytes, error(nil)
	if manifestBytes == nil || l.manifestWrites.Load() != writes {
		// None was read, or this open rewrote it (sealing a segment).
		current, err = readMeta(l.dir, manifestName, metaManifest)
	}
	switch {
	case err == nil && bytes.Equal(current, l.manifest()):
	case err == nil && clean != nil && bytes.Equal(current, encodeManifest(l.manifestEntries(), clean)):
		// Only the clean close record differs: the first change removes it
		// before it writes (dropCleanRecord), so an open writes nothing.
		l.cleanPending.Store(true)
	default:
		return l.writeManifest(true)
	}
	return nil
}

// openSegment opens one file. A sealed file is trusted through its footer
// (checked, O(1)). Otherwise it is scanned: the last file becomes the active
// segment; an earlier one must end exactly at nextBase (a crash between its
// last append and its seal) and is sealed now. A damaged footer is rebuilt
// from the records, which the footer's checksum does not cover, and
// reported. Read-only opens, and lazy ones (a segment's first use, see
// Log.ensure), repair nothing: they serve what is valid.
//
// The steps, one function each: openByFooter (the states the file's tail
// tells without a scan), scanSegment (index the records), then
// serveUnsealed (read-only) or resumeUnsealed (writable: cut, resume or
// seal).
func (l *Log) openSegment(base uint64, last bool, nextBase uint64, lazy bool) (*segment, error) {
	return l.openSegmentFrom(nil, base, last, nextBase, lazy)
}

// openSegmentFrom is openSegment for Open's load, which passes the
// manifest's clean close record (nil if none): the last segment is opened
// from it if it describes that file.
func (l *Log) openSegmentFrom(clean *cleanEnd, base uint64, last bool, nextBase uint64, lazy bool) (*segment, error) {
	readOnly := l.opts.ReadOnly || lazy
	dev, err := l.dir.Open(segName(base), blockdev.Options{ReadOnly: readOnly})
	if err != nil {
		return nil, err
	}
	s := l.newSegment(base, dev)
	s, damaged, done, err := l.openByFooter(s, clean, last, lazy, readOnly)
	if done {
		return s, err
	}
	sc, frames, done, err := l.scanSegment(s, clean, last, lazy, readOnly, &damaged)
	if done {
		return s, err
	}
	end := position{pos: sc.End(), off: sc.NextOffset()}
	s.visible.Store(&end)
	if !last && end.off != nextBase {
		return s, s.corrupt("open", end.pos, fmt.Errorf("unsealed segment ends at offset %d, but the next segment starts at %d: records are missing (file left untouched)", end.off, nextBase))
	}
	if damaged >= 0 {
		l.noteRebuiltFooter(base)
		l.opts.Logger.Warn("segstore: damaged footer, index rebuilt from the records", "segment", s.name, "footer", damaged)
	}
	if last {
		read := sc.BytesRead()
		l.noteReport(func(r *Recovery) { r.ActiveRead = read })
	}
	if readOnly {
		return l.serveUnsealed(s, last, lazy, damaged, frames), nil
	}
	return s, l.resumeUnsealed(s, sc, last, damaged, frames)
}

// openByFooter opens s by what its tail says, without a scan: a sealed
// file through its footer, the last file through the manifest's clean
// close record, and a last file whose header never became durable (all
// zeros: removed, and nil returned). done says whether the open ended
// here (with err); otherwise the file needs a scan, and damaged is the
// position of a damaged footer (-1: none).
func (l *Log) openByFooter(s *segment, clean *cleanEnd, last, lazy, readOnly bool) (_ *segment, damaged int64, done bool, err error) {
	hdr, foot, err := wal.ReadSealed(s.dev)
	var ce *wal.CorruptionError
	switch {
	case err == nil:
		s.hdr = hdr
		if err := l.checkHeader(s); err != nil {
			return s, -1, true, err
		}
		if err := s.decodeFooter(foot); err == nil {
			if !lazy {
				l.noteReport(func(r *Recovery) { r.Sealed++ })
			}
			return s, -1, true, nil
		}
		return s, foot.Pos, false, nil
	case errors.As(err, &ce) && ce.InFooter:
		return s, ce.Position, false, nil
	case last && errors.Is(err, wal.ErrNotWAL):
		// A crash while the file was being created: its header never became
		// durable, so nothing in it was ever acknowledged. Drop it if it is
		// all zeros; anything else is damage.
		if empty, zerr := allZero(s.dev); zerr != nil || !empty {
			return s, -1, true, errors.Join(err, zerr)
		}
		l.noteReport(func(r *Recovery) { r.RemovedIncomplete = append(r.RemovedIncomplete, s.base) })
		s.release()
		if l.opts.ReadOnly {
			return nil, -1, true, nil
		}
		if err := l.dir.Remove(s.name); err != nil {
			return nil, -1, true, err
		}
		return nil, -1, true, l.dir.Sync()
	case !errors.Is(err, wal.ErrNoFooter):
		return s, -1, true, err
	case last:
		if ok, err := l.openFromCleanClose(s, clean, hdr, readOnly); ok || err != nil {
			return s, -1, true, err
		}
	}
	return s, -1, false, nil
}

// scanSegment scans s, indexing every valid frame, and returns the
// scanner and the frames it found. A scan that ends at a good footer
// (sealed, but the seal's final truncate did not happen) opens s as
// sealed: done. A damaged footer the scan finds is recorded in *damaged.
func (l *Log) scanSegment(s *segment, clean *cleanEnd, last, lazy, readOnly bool, damaged *int64) (sc *wal.Scanner, frames int, done bool, err error) {
	if sc, err = wal.NewScanner(s.dev); err != nil {
		return nil, 0, true, err
	}
	if c := clean; last && c != nil && c.base == s.base {
		if size, err := s.dev.Size(); err == nil && size == c.size {
			sc.TrustCleanEnd(c.end)
			l.noteReport(func(r *Recovery) { r.CleanEnd = true })
		}
	}
	s.hdr = sc.Header()
	if err := l.checkHeader(s); err != nil {
		return nil, 0, true, err
	}
	for sc.Next() {
		s.indexFrame(sc.Frame())
		frames++
	}
	var ce *wal.CorruptionError
	switch err := sc.Err(); {
	case errors.As(err, &ce) && ce.InFooter:
		*damaged = ce.Position
	case err != nil:
		return nil, 0, true, err
	case sc.Footer() != nil && *damaged < 0:
		// Sealed, but its final truncate did not happen: the footer is good,
		// and the scan proved only zeros follow it. A writable open finishes
		// the seal, so the file ends at its footer again (exports send the
		// file whole, and importers find the footer at its end); a read-only
		// one knows the footer's end (s.man.size), which is what it exports.
		if err := s.decodeFooter(sc.Footer()); err == nil {
			if size, err := s.dev.Size(); !readOnly && err == nil && size > sc.Footer().End {
				if err := finishSeal(s.dev, sc.Footer()); err != nil {
					return nil, 0, true, fmt.Errorf("engine: finish the seal of %s (cut the zeros after its footer at byte %d; its records are intact, reopen once the device works): %w", s.path, sc.Footer().End, err)
				}
				l.noteReport(func(r *Recovery) { r.FinishedSeals = append(r.FinishedSeals, s.base) })
			}
			if !lazy {
				l.noteReport(func(r *Recovery) { r.Sealed++ })
			}
			return nil, 0, true, nil
		}
		*damaged = sc.Footer().Pos
	}
	return sc, frames, false, nil
}

// serveUnsealed finishes a read-only (or lazy) open of a scanned file,
// repairing nothing.
func (l *Log) serveUnsealed(s *segment, last, lazy bool, damaged int64, frames int) *segment {
	if last {
		l.noteReport(func(r *Recovery) { r.ActiveFrames = frames })
	}
	s.mu.Lock()
	// Not last and unsealed: a crash (or this open's timing) came
	// between a roll and its seal, which a writer's open, or the
	// writer, completes. Its records end here; it has no footer to
	// export yet, so it is retired, not sealed.
	s.sealed = damaged >= 0 || (!last && lazy)
	s.mu.Unlock()
	s.retired.Store(!last && !s.sealed)
	return s
}

// resumeUnsealed finishes a writable open of a scanned file: it cuts a
// damaged footer (and what follows it) or the torn tail, resumes a writer
// after the last valid frame, and seals the file unless it is the last
// (the active segment).
func (l *Log) resumeUnsealed(s *segment, sc *wal.Scanner, last bool, damaged int64, frames int) error {
	var w *wal.Writer
	var torn *wal.TornTail
	if damaged >= 0 {
		size, err := s.dev.Size()
		if err != nil {
			return err
		}
		if err := wal.Cut(s.dev, damaged, size); err != nil {
			return err
		}
		if w, _, err = wal.Open(s.dev, l.walOptions(s)); err != nil { // rare: scan again after the cut
			return err
		}
	} else {
		rec := sc.Recovery()
		torn = rec.Torn
		var err error
		if w, err = wal.Resume(s.dev, rec, l.walOptions(s)); err != nil {
			return err
		}
	}
	s.w = w
	if last {
		l.noteReport(func(r *Recovery) { r.ActiveFrames, r.Torn = frames, torn })
		if torn != nil {
			l.opts.Logger.Warn("segstore: cut a torn tail", "segment", s.name, "at", torn.Pos, "bytes", torn.Bytes, "reason", torn.Reason)
		}
		return nil
	}
	if err := l.seal(s); err != nil {
		return err
	}
	l.noteReport(func(r *Recovery) { r.Resealed = append(r.Resealed, s.base) })
	return nil
}

// openFromCleanClose opens s, the last segment, whose header is hdr,
// from the manifest's clean close record, if it has one for s and the file
// agrees with it (the size it had, zeros after the end in the end's
// block): the index and the end come from the record, and no record is
// read. It reports whether it opened s; false (nil error) means the caller
// scans the file.
func (l *Log) openFromCleanClose(s *segment, c *cleanEnd, hdr wal.FileHeader, readOnly bool) (bool, error) {
	if c == nil || c.base != s.base || c.index == nil {
		return false, nil
	}
	if size, err := s.dev.Size(); err != nil || size != c.size {
		return false, nil
	}
	s.hdr = hdr
	if err := l.checkHeader(s); err != nil {
		return false, err
	}
	index, interval, err := footerIndex(s.hdr, s.base, &wal.Footer{Data: c.index, Next: c.next, Pos: c.end})
	if err != nil {
		l.opts.Logger.Warn("segstore: the manifest's clean close record does not fit the last segment; scanning it", "segment", s.path, "err", err)
		return false, nil
	}
	// The block holding the end must be zeros from the end on: what a
	// clean close left, and what the writer would rewrite.
	a := s.dev.Alignment()
	blk := int64(a.Block)
	from := alignedbuf.AlignDown(c.end, blk)
	if from+blk <= c.size {
		b := a.Alloc(int(blk))
		if _, err := s.dev.ReadAt(b, from); err != nil && !errors.Is(err, io.EOF) {
			return false, fmt.Errorf("engine: read segment %s at %d: %w", s.path, from, err)
		}
		if !bytes.Equal(b[c.end-from:], make([]byte, blk-(c.end-from))) {
			return false, nil
		}
	}
	s.mu.Lock()
	s.index, s.lastRec = index, c.lastRec
	s.interval.Store(interval)
	s.mu.Unlock()
	s.visible.Store(&position{pos: c.end, off: c.next})
	l.noteReport(func(r *Recovery) { r.CleanEnd, r.CleanIndex = true, true })
	if readOnly {
		return true, nil
	}
	w, err := wal.Resume(s.dev, &wal.Recovery{Header: hdr, End: c.end, NextOffset: c.next, LastTime: c.lastTime}, l.walOptions(s))
	if err != nil {
		return true, err
	}
	s.w = w
	return true, nil
}

// finishSeal cuts a sealed file whose seal a crash interrupted to end at
// its footer f, and fdatasyncs: the steps wal.Writer.Seal had left to do.
func finishSeal(dev blockdev.Device, f *wal.Footer) error {
	if err := dev.Truncate(f.End); err != nil {
		return err
	}
	return dev.Sync()
}

// allZero reports whether every byte of dev is zero (or it is empty).
func allZero(dev blockdev.Device) (bool, error) {
	size, err := dev.Size()
	if err != nil {
		return false, err
	}
	a := dev.Alignment()
	buf := a.Alloc(1 << 20)
	zero := make([]byte, len(buf))
	for p := int64(0); p < size; p += int64(len(buf)) {
		n, err := dev.ReadAt(buf, p)
		if err != nil && !errors.Is(err, io.EOF) {
			return false, err
		}
		if !bytes.Equal(buf[:n], zero[:n]) {
			return false, nil
		}
	}
	return true, nil
}

// newSegment returns the segment at base, with its file dev (nil until
// loaded, for a lazily loaded one).
func (l *Log) newSegment(base uint64, dev blockdev.Device) *segment {
	name := segName(base)
	s := &segment{base: base, name: name, path: filepath.Join(l.dir.Path(), name), dev: dev,
		ns: l.cache.NewNamespace()}
	s.interval.Store(int64(l.opts.IndexInterval))
	s.refs.Store(1)
	s.loaded.Store(dev != nil)
	return s
}

// noteReport applies f to Open's report while Open runs; after it, a
// segment opened (a lazy load, Refresh, a TruncateBack's reopen) changes
// nothing: the report stays what Open did.
func (l *Log) noteReport(f func(*Recovery)) {
	l.reportMu.Lock()
	if !l.reportFinal {
		f(&l.report)
	}
	l.reportMu.Unlock()
}

// noteRebuiltFooter reports that segment base is served from an index
// rebuilt from its records, its footer being damaged: in Open's report
// while Open runs, else once in rebuiltSince (a segment the open-file
// bound closes is found damaged again at each load).
func (l *Log) noteRebuiltFooter(base uint64) {
	l.reportMu.Lock()
	defer l.reportMu.Unlock()
	switch {
	case !l.reportFinal:
		l.report.RebuiltFooters = append(l.report.RebuiltFooters, base)
	case !slices.Contains(l.rebuiltSince, base):
		l.rebuiltSince = append(l.rebuiltSince, base)
	}
}

// clone returns a copy of r that shares no memory with it.
func (r Recovery) clone() Recovery {
	r.Resealed = slices.Clone(r.Resealed)
	r.FinishedSeals = slices.Clone(r.FinishedSeals)
	r.RebuiltFooters = slices.Clone(r.RebuiltFooters)
	r.RemovedIncomplete = slices.Clone(r.RemovedIncomplete)
	if r.Torn != nil {
		torn := *r.Torn
		r.Torn = &torn
	}
	return r
}

func (l *Log) checkHeader(s *segment) error {
	if s.hdr.BaseOffset != s.base {
		return s.corrupt("open", 0, fmt.Errorf("file header says base offset %d, the name says %d", s.hdr.BaseOffset, s.base))
	}
	return nil
}
