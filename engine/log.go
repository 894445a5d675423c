// Package engine is the segment log: records with dense uint64 offsets in
// segment files named by base offset, written through the wal group-commit
// writer, sealed with a self-describing footer (sparse index), and read
// through segstore's own cache with O_DIRECT.
package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

// lockName is the file a writer flocks so that two processes cannot write
// one store.
const lockName = "LOCK"

// dirLocker is a directory a writer can lock (blockdev.OSDir): Open takes
// the lock before it reads or writes a file, so that two writers, in one
// process or two, never open one store.
type dirLocker interface {
	Lock(name string) (release func() error, err error)
}

var _ dirLocker = (*blockdev.OSDir)(nil)

// Log is an append-only log of records. All methods are safe for
// concurrent use.
type Log struct {
	opts     Options
	dir      blockdev.Dir
	cache    *cache.Cache
	ownCache bool
	unlock   func() error

	// changeMu serializes the changes to the log's files and segment list
	// other than appends: a roll (from the creation of its next segment
	// until the old one is sealed, the manifest written and retention
	// applied), truncations, imports and Close. It is taken before mu.
	changeMu sync.Mutex
	// mu: Append holds it shared; a roll holds it exclusively only while
	// it makes the next segment the active one (no append is then in
	// flight), truncations, imports and Close for their whole change.
	// Readers never take it.
	mu       sync.RWMutex
	active   *segment    // guarded by mu; nil when read-only or failed
	failed   error       // guarded by mu, set with changeMu held too: a roll or truncation stopped halfway; no more changes
	isClosed atomic.Bool // set once by Close, under mu; readers check it without mu
	// rolling is the roll an append triggered, run by a goroutine of its
	// own (so the appender returns once its batch is durable): appends
	// wait for its next segment instead of filling the full one further.
	rolling atomic.Pointer[pendingRoll]
	bg      sync.WaitGroup // roll goroutines; Close waits for them
	// retiring is the segment a roll has retired and not sealed yet (its
	// writer's counters are neither the active segment's nor in sealed).
	// statsMu guards it, and orders the seal's move of those counters into
	// sealed against Stats, which reads both.
	statsMu  sync.Mutex
	retiring *segment
	// rollHook, set by tests only, runs at named steps of a roll an append
	// triggered: "start" (in its goroutine, before anything is locked) and
	// "cut" (the next segment takes appends; the old one is not sealed yet).
	rollHook func(step string)
	// truncHook, set by tests only, runs at each step of a TruncateBack
	// that changes the files or DURABLE, with the writer's locks held:
	// "hidden" (DURABLE says nothing of the segment cut into is durable),
	// "removed NAME" (each segment file dropped, once removed; TruncateFront
	// and retention, which drop files the same way, run it too), "prefix"
	// (the kept records are durable in NAME.tmp), "renamed" (NAME.tmp is
	// NAME), "synced" (the directory fsync after the rename), "reopened"
	// (the rewrite is the active segment) or, at a segment boundary,
	// "started" (the new active segment exists), and "published" (DURABLE
	// holds the new end).
	truncHook func(step string)

	segs  atomic.Pointer[[]*segment] // immutable snapshot, ascending by base
	files openFiles                  // the sealed segments whose files are open, bounded
	start atomic.Uint64              // first retained offset (TruncateFront, retention)

	durMu     sync.Mutex
	durCh     chan struct{}    // closed and replaced when durability advances, a segment is sealed or the end is cut, if durWaited
	durWaited bool             // guarded by durMu: a Wait took durCh
	readPool  *alignedbuf.Pool // aligned buffers for point-read misses (copied into the cache)
	spareMu   sync.Mutex
	spare     *spareFile // guarded by spareMu: the next segment file, being prepared
	sealed    atomic.Pointer[wal.Stats]
	// tail: the growing last index interval of the active segment (or of
	// a read-only log's last one) as a read last built it, not in the
	// cache, whose values never change, so reads of the newest records
	// (raft's GetLog of what it just stored) do not go to the disk each
	// time. One per log: only the newest segment grows, and a chunk of an
	// older one is never kept after its segment stops growing.
	tail atomic.Pointer[tailChunk]
	// fresh: the batches appended last, served without a device read (nil
	// for a read-only log).
	fresh *fresh
	// bufs: the write buffers the segments' writers hand on at each roll.
	bufs wal.Buffers

	// Point reads: Read calls that returned a record, and the bytes they
	// read from the device (read-ahead included).
	pointReads, readDeviceBytes atomic.Int64
	// indexReadBytes: the part of readDeviceBytes that read sealed
	// segments' index blocks (sealedindex.go); indexHits, indexMisses:
	// the cache's hits and misses that were lookups of index blocks.
	indexReadBytes, indexHits, indexMisses atomic.Int64
	indexHints                             indexHints // sealedindex.go
	indexRuns                              indexRuns  // sealedindex.go

	ra     readAheads       // sequential point reads (readahead.go)
	raPool *alignedbuf.Pool // aligned buffers of read-ahead reads

	syncHist, batchHist *hist // fdatasync latency, appends per flush

	exportSendfile atomic.Int64 // bytes exported by sendfile (Section.WriteTo to a socket)
	exportCopied   atomic.Int64 // bytes exported by a copy (any other writer)
	manifestMu     sync.Mutex   // serializes manifest writes
	manifestWrites atomic.Int64 // manifest writes so far (putManifest)
	// cleanPending: the manifest on disk still holds the clean close record
	// this log was opened from; the first change removes it first.
	cleanPending atomic.Bool
	refreshMu    sync.Mutex // serializes Refresh (read-only logs)
	// durable: the DURABLE file, written by a writer (under durMu) and
	// read by read-only logs (under refreshMu; nil until the writer made
	// it, or in a simulated directory).
	durable    *durableFile
	liveWriter bool         // read-only logs: a writer held the lock at the last look (under refreshMu)
	ack        durableState // read-only logs: what the live writer had published at the last look (under refreshMu)
	ackOK      bool         // ack was read consistently (under refreshMu)
	// refreshHook, set by tests only, runs at named steps of a look
	// (under refreshMu): after it read the writer's words ("words"),
	// after it listed the directory ("listed", with the segment files
	// listed), and after it checked the segments it knows against the
	// listing and its last one's file ("known"), before it follows the
	// files.
	refreshHook func(step string, bases *[]uint64)
	clean       *cleanEnd // the manifest's clean close record, while opening
	// report is what Open found and did. Open's segments, opened in
	// parallel, note in it under reportMu; it is final once Open returns
	// (reportFinal), so Stats copies it without a lock. What a segment
	// opened later (a lazy load, Refresh, TruncateBack's reopen) finds is
	// not Open's: noteReport drops it, except a damaged footer, which goes
	// to rebuiltSince.
	reportMu     sync.Mutex
	reportFinal  bool // guarded by reportMu: Open has returned
	report       Recovery
	rebuiltSince []uint64 // guarded by reportMu: segments whose damaged footer a load after Open found, each once
}

// poolAlign is the alignment of pooled read buffers: it covers the direct
// I/O memory alignment of the devices seen (512 here, 4096 on 4Kn disks); a
// device that needs more gets freshly allocated buffers instead.
const poolAlign = 4096

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
			return nil, fmt.Errorf("%w (the log's writer changed %s during each of %d attempts to open it read-only: open it again once the writer pauses)", err, dir, try)
		}
	}
}

// readOnlyOpenHook, set by tests only (and only while no other test opens
// a log), runs at named steps of each attempt of a read-only open:
// "listed" (the directory is listed, no segment file opened yet) and
// "loaded" (every file listed is opened and the last one scanned; the
// writer's DURABLE words are read next).
var readOnlyOpenHook func(step string)

// openStep runs readOnlyOpenHook at a step of a read-only open.
func (l *Log) openStep(step string) {
	if l.opts.ReadOnly && readOnlyOpenHook != nil {
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
		od, err := openExistingDir(path, opts.Buffered)
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
		if opts.ReadOnly { // a read-only open creates nothing
			open = openExistingDir
		}
		d, err := open(dir, opts.Buffered)
		if err != nil {
			return nil, err
		}
		l.dir = d
	}
	// A writer locks every directory that can be locked: the one Open
	// opened, and an Options.Dir that is a real directory (or any Dir with
	// a Lock method). The simulated directory cannot be shared between
	// processes and has none.
	if lk, ok := l.dir.(dirLocker); ok && !opts.ReadOnly {
		if l.unlock, err = lk.Lock(lockName); err != nil {
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
	if !opts.ReadOnly {
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
// by scanning (and cutting its torn tail).
func (l *Log) load() error {
	names, err := l.dir.List()
	if err != nil {
		return err
	}
	l.openStep("listed")
	var bases []uint64
	for _, n := range names {
		if b, ok := ParseSegmentName(n); ok {
			bases = append(bases, b)
		}
		if strings.HasSuffix(n, tmpSuffix) && !l.opts.ReadOnly {
			// A file being written when the process stopped (a truncation's
			// rewrite, a metadata update): never committed, so discarded.
			if err := l.dir.Remove(n); err != nil {
				return err
			}
		}
	}
	slices.Sort(bases)
	var manifest map[uint64]manifestEntry
	var manifestBytes []byte // as read, to compare with what open found
	if !l.opts.VerifyOnOpen {
		manifest, l.clean, manifestBytes = l.readManifest()
	}
	defer func() { l.clean = nil }() // it described the files as open found them
	writes := l.manifestWrites.Load()
	// Sealed segments through the manifest, or in parallel through their
	// footers; then the last one (which may create or repair files) alone.
	type opened struct {
		s   *segment
		err error
	}
	results := make([]opened, len(bases))
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
	sealedOK := !slices.ContainsFunc(results, func(r opened) bool { return r.err != nil })
	if n := len(bases); n > 0 && sealedOK {
		t := time.Now()
		results[n-1].s, results[n-1].err = l.openSegment(bases[n-1], true, 0, false)
		l.report.ActiveScan = time.Since(t)
	}
	var segs []*segment
	var firstErr error
	for _, r := range results {
		if r.s != nil {
			segs = append(segs, r.s)
		}
		if firstErr == nil && r.err != nil {
			firstErr = r.err
			if l.opts.ReadOnly && isNotExist(r.err) {
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
	if firstErr != nil {
		l.segs.Store(&segs)
		return firstErr
	}
	l.report.Segments = len(segs)
	l.segs.Store(&segs)
	l.noteOpen(segs...)
	if err := l.loadStart(); err != nil {
		return err
	}
	if l.opts.ReadOnly {
		return nil
	}
	if len(segs) == 0 || segs[len(segs)-1].w == nil {
		next := uint64(0)
		if len(segs) > 0 {
			next = segs[len(segs)-1].vis().off
		}
		s, err := l.createSegment(next, true)
		if err != nil {
			return err
		}
		segs = append(segs, s)
		l.segs.Store(&segs)
	}
	l.active = segs[len(segs)-1]
	// The next segment is created with MaxWrite: a value its device cannot
	// write would fail that roll, long after this open.
	if blk := int64(l.active.dev.Alignment().Block); alignedbuf.AlignDown(int64(l.opts.MaxWrite), blk) < 4*blk {
		return &OptionError{Option: "MaxWrite", Value: sizeString(int64(l.opts.MaxWrite)),
			Problem: fmt.Sprintf("is too small for the device's block of %d bytes: use at least %s", blk, sizeString(4*blk))}
	}
	current, err := manifestBytes, error(nil)
	if manifestBytes == nil || l.manifestWrites.Load() != writes {
		// None was read, or this open rewrote it (sealing a segment).
		current, err = readMeta(l.dir, manifestName, metaManifest)
	}
	switch {
	case err == nil && bytes.Equal(current, l.manifest()):
	case err == nil && l.clean != nil && bytes.Equal(current, encodeManifest(l.manifestEntries(), l.clean)):
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
func (l *Log) openSegment(base uint64, last bool, nextBase uint64, lazy bool) (*segment, error) {
	name := segName(base)
	readOnly := l.opts.ReadOnly || lazy
	dev, err := l.dir.Open(name, blockdev.Options{ReadOnly: readOnly})
	if err != nil {
		return nil, err
	}
	s := l.newSegment(base, dev)
	damaged := int64(-1) // position of a damaged footer
	hdr, foot, err := wal.ReadSealed(dev)
	var ce *wal.CorruptionError
	switch {
	case err == nil:
		s.hdr = hdr
		if err := l.checkHeader(s); err != nil {
			return s, err
		}
		if err := s.decodeFooter(foot); err == nil {
			if !lazy {
				l.noteReport(func(r *Recovery) { r.Sealed++ })
			}
			return s, nil
		}
		damaged = foot.Pos
	case errors.As(err, &ce) && ce.InFooter:
		damaged = ce.Pos
	case last && errors.Is(err, wal.ErrNotWAL):
		// A crash while the file was being created: its header never became
		// durable, so nothing in it was ever acknowledged. Drop it if it is
		// all zeros; anything else is damage.
		if empty, zerr := allZero(dev); zerr != nil || !empty {
			return s, errors.Join(err, zerr)
		}
		l.noteReport(func(r *Recovery) { r.RemovedIncomplete = append(r.RemovedIncomplete, base) })
		s.release()
		if l.opts.ReadOnly {
			return nil, nil
		}
		if err := l.dir.Remove(name); err != nil {
			return nil, err
		}
		return nil, l.dir.Sync()
	case !errors.Is(err, wal.ErrNotSealed):
		return s, err
	case last:
		if ok, err := l.openFromCleanClose(s, hdr, readOnly); ok || err != nil {
			return s, err
		}
	}

	sc, err := wal.NewScanner(dev)
	if err != nil {
		return s, err
	}
	if c := l.clean; last && c != nil && c.base == base {
		if size, err := dev.Size(); err == nil && size == c.size {
			sc.TrustCleanEnd(c.end)
			l.noteReport(func(r *Recovery) { r.CleanEnd = true })
		}
	}
	s.hdr = sc.Header()
	if err := l.checkHeader(s); err != nil {
		return s, err
	}
	frames := 0
	for sc.Next() {
		s.indexFrame(sc.Frame())
		frames++
	}
	switch err := sc.Err(); {
	case errors.As(err, &ce) && ce.InFooter:
		damaged = ce.Pos
	case err != nil:
		return s, err
	case sc.Footer() != nil && damaged < 0:
		// Sealed, but its final truncate did not happen: the footer is good,
		// and the scan proved only zeros follow it. A writable open finishes
		// the seal, so the file ends at its footer again (exports send the
		// file whole, and importers find the footer at its end); a read-only
		// one knows the footer's end (s.man.size), which is what it exports.
		if err := s.decodeFooter(sc.Footer()); err == nil {
			if size, err := dev.Size(); !readOnly && err == nil && size > sc.Footer().End {
				if err := finishSeal(dev, sc.Footer()); err != nil {
					return s, fmt.Errorf("engine: finish the seal of %s (cut the zeros after its footer at byte %d; its records are intact, reopen once the device works): %w", s.path, sc.Footer().End, err)
				}
				l.noteReport(func(r *Recovery) { r.FinishedSeals = append(r.FinishedSeals, base) })
			}
			if !lazy {
				l.noteReport(func(r *Recovery) { r.Sealed++ })
			}
			return s, nil
		}
		damaged = sc.Footer().Pos
	}
	end := position{pos: sc.End(), off: sc.NextOffset()}
	s.visible.Store(&end)
	if !last && end.off != nextBase {
		return s, s.corrupt("open", end.pos, fmt.Errorf("unsealed segment ends at offset %d, but the next segment starts at %d: records are missing (file left untouched)", end.off, nextBase))
	}
	if damaged >= 0 {
		l.noteRebuiltFooter(base)
		l.opts.Logger.Warn("segstore: damaged footer, index rebuilt from the records", "segment", name, "footer", damaged)
	}
	if last {
		read := sc.BytesRead()
		l.noteReport(func(r *Recovery) { r.ActiveRead = read })
	}
	if readOnly {
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
		return s, nil
	}
	var w *wal.Writer
	var torn *wal.TornTail
	if damaged >= 0 {
		size, err := dev.Size()
		if err != nil {
			return s, err
		}
		if err := wal.Cut(dev, damaged, size); err != nil {
			return s, err
		}
		w, _, err = wal.Open(dev, l.walOptions(s)) // rare: scan again after the cut
		if err != nil {
			return s, err
		}
	} else {
		rec := sc.Recovery()
		torn = rec.Torn
		if w, err = wal.Resume(dev, rec, l.walOptions(s)); err != nil {
			return s, err
		}
	}
	s.w = w
	if last {
		l.noteReport(func(r *Recovery) { r.ActiveFrames, r.Torn = frames, torn })
		if torn != nil {
			l.opts.Logger.Warn("segstore: cut a torn tail", "segment", name, "at", torn.Pos, "bytes", torn.Bytes, "reason", torn.Reason)
		}
		return s, nil
	}
	if err := l.seal(s); err != nil {
		return s, err
	}
	l.noteReport(func(r *Recovery) { r.Resealed = append(r.Resealed, base) })
	return s, nil
}

// openFromCleanClose opens s, the last segment, whose header is hdr,
// from the manifest's clean close record, if it has one for s and the file
// agrees with it (the size it had, zeros after the end in the end's
// block): the index and the end come from the record, and no record is
// read. It reports whether it opened s; false (nil error) means the caller
// scans the file.
func (l *Log) openFromCleanClose(s *segment, hdr wal.FileHeader, readOnly bool) (bool, error) {
	c := l.clean
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
	index, interval, err := s.decodeFooterIndex(&wal.Footer{Data: c.index, Next: c.next, Pos: c.end})
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

// formatVersion is the wal format version new segments are created in: 0,
// the current one. Tests and benchmarks set it to write stores of an older
// version (which this build reads, and appends to in their version).
var formatVersion uint32

// walOptions returns the writer options of segment s, with its hooks.
func (l *Log) walOptions(s *segment) wal.Options {
	o := wal.Options{
		SyncMode: l.opts.SyncMode, SyncInterval: l.opts.SyncInterval, MaxWrite: l.opts.MaxWrite, Now: l.opts.Now,
		OnReserve: s.onReserve,
		OnDurable: func(pos int64, off uint64) {
			s.visible.Store(&position{pos: pos, off: off})
			l.notifyDurable()
		},
		OnFlush: l.noteFlush,
		OnFail:  func(error) { l.wakeWaiters() },
		Version: formatVersion,
		Buffers: &l.bufs,
	}
	if !l.opts.NoPreallocate {
		o.Preallocate, o.PreZero = l.opts.SegmentSize, true
	}
	return o
}

// spareName is the file prepared (pre-zeroed) in the background to become
// the next segment; like every .tmp file it is discarded on open.
const spareName = "spare" + tmpSuffix

// zeroSpareBelow: the spare is zeroed when the active segment's writes
// average less than this many bytes, and only reserved (fallocate) above.
const zeroSpareBelow = 256 << 10

// spareFile is the next segment's file, zeroed by a goroutine while the
// active segment fills, so a roll only renames it and writes a header
// instead of zeroing SegmentSize bytes with appends stalled.
type spareFile struct {
	done chan struct{}
	dev  blockdev.Device
	err  error
	// hurry: the roll needs the spare now, zero the rest at once; cancel:
	// the log is closing, stop.
	hurry, cancel atomic.Bool
}

// spareLead is how much faster than the active segment fills its spare is
// zeroed: begun when the segment is a quarter full, the spare is ready
// when it is about three quarters full.
const spareLead = 2

// spareWait is how long the zeroing waits for appends before it looks
// again whether it may write more zeros.
const spareWait = time.Millisecond

// errSpareDropped stops the preparation of a spare the log no longer wants.
var errSpareDropped = errors.New("engine: the spare segment file was dropped (the log closed)")

// prepareSpareLocked starts preparing the spare file for the segment after
// s, the active segment, unless preallocation is off or a spare exists.
// Append calls it once s is a quarter full: by then s's writes tell
// whether to zero the spare, and there is time to zero it at a pace. The
// caller holds l.mu (shared is enough), which keeps s.w from being sealed
// away.
//
// The zeros are written in pieces of wal.ZeroChunk, each only once the
// segment has grown by half of one since the last: every fdatasync of the
// segment also flushes the zeros written since the one before, and
// zeroing all of it at once made a few dozen appends wait for tens of MiB
// of zeros (measured with strace: 1 KiB x 64 appends, fdatasync p50 213
// µs, 1.6 ms during the zeroing).
func (l *Log) prepareSpareLocked(s *segment) {
	if l.opts.NoPreallocate || l.opts.ReadOnly {
		return
	}
	l.spareMu.Lock()
	defer l.spareMu.Unlock()
	if l.spare != nil {
		return
	}
	// Zero the spare for small appends, where it makes each fdatasync
	// cheaper; only reserve it for large ones, where zeroing would double
	// the bytes written while the appends are bandwidth-bound (measured:
	// 1 KiB x 64 at 1.9x with zeroed blocks; 64 KiB x 16 as fast without).
	zero := true
	if st := s.w.Stats(); st.Writes > 0 && st.WriteBytes/st.Writes >= zeroSpareBelow {
		zero = false
	}
	sp := &spareFile{done: make(chan struct{})}
	l.spare = sp
	start := s.vis().pos
	pace := func(done int64) error {
		for {
			switch {
			case sp.cancel.Load():
				return errSpareDropped
			case sp.hurry.Load() || done <= spareLead*(s.vis().pos-start):
				return nil
			}
			time.Sleep(spareWait)
		}
	}
	go func() {
		defer close(sp.done)
		_ = l.dir.Remove(spareName)
		dev, err := l.dir.Open(spareName, blockdev.Options{Create: true})
		if err == nil {
			if err = wal.Prepare(dev, l.opts.SegmentSize, zero, pace); err != nil {
				dev.Close()
				dev = nil
			}
		}
		sp.dev, sp.err = dev, err
	}()
}

// takeSpare waits for the spare (its zeroing no longer paced) and hands it
// over, or returns nil if there is none or preparing it failed (the caller
// creates a file itself).
func (l *Log) takeSpare() blockdev.Device {
	l.spareMu.Lock()
	sp := l.spare
	l.spare = nil
	l.spareMu.Unlock()
	if sp == nil {
		return nil
	}
	sp.hurry.Store(true)
	<-sp.done
	if errors.Is(sp.err, errSpareDropped) {
		return nil
	}
	if sp.err != nil {
		l.opts.Logger.Warn("segstore: preparing the next segment failed; creating it on the spot", "err", sp.err)
		return nil
	}
	return sp.dev
}

// dropSpare waits for the spare, closes it and removes its file (on Close,
// so a closed log does not keep a segment's worth of zeros; a leftover after
// a crash is discarded at the next open).
func (l *Log) dropSpare() {
	l.spareMu.Lock()
	sp := l.spare
	if sp != nil {
		sp.cancel.Store(true)
	}
	l.spareMu.Unlock()
	if sp == nil {
		return
	}
	if dev := l.takeSpare(); dev != nil {
		dev.Close()
	}
	_ = l.dir.Remove(spareName)
}

// createSegment creates the file for a new active segment at base: the
// prepared spare renamed into place, or a new file. Commit points: the wal
// header's fdatasync (content), then the directory fsync (name). A crash
// between the rename and the header's sync leaves a named file of zeros,
// which open removes as an interrupted creation. Without preallocate (and
// no spare ready), the file is not reserved and zeroed up front, whatever
// Options.NoPreallocate says.
func (l *Log) createSegment(base uint64, preallocate bool) (*segment, error) {
	name := segName(base)
	var dev blockdev.Device
	prepared := false
	if spare := l.takeSpare(); spare != nil {
		err := l.dir.Rename(spareName, name)
		spare.Close()
		if err != nil {
			return nil, err
		}
		// Opened again under its name: a device names its file in errors
		// by the name it was opened with, and this one is no spare now.
		if dev, err = l.dir.Open(name, blockdev.Options{}); err != nil {
			return nil, err
		}
		prepared = true
	} else {
		var err error
		if dev, err = l.dir.Open(name, blockdev.Options{Create: true}); err != nil {
			return nil, err
		}
	}
	s := l.newSegment(base, dev)
	s.visible.Store(&position{pos: wal.DataStart, off: base})
	create := wal.Create
	if prepared {
		create = wal.CreatePrepared
	}
	wo := l.walOptions(s)
	if !preallocate && !prepared {
		wo.Preallocate, wo.PreZero = 0, false
	}
	w, err := create(dev, base, wo)
	if err != nil {
		dev.Close()
		return nil, err
	}
	if err := l.dir.Sync(); err != nil {
		w.Close()
		dev.Close()
		return nil, err
	}
	s.w, s.hdr = w, w.Header()
	return s, nil
}

// seal writes s's footer and makes it immutable. Its commit point is the
// wal seal's final fdatasync.
func (l *Log) seal(s *segment) error {
	// No append is in flight (s is retired by a roll, or the caller is
	// opening): once synced, the records end where the footer will go.
	if err := s.w.Sync(); err != nil {
		return err
	}
	end, next := s.w.Durable()
	footer, stride := s.encodeFooter(next, end, s.footerFits(s.w.MaxBatchBytes()))
	if stride > 1 {
		l.opts.Logger.Warn("segstore: the segment's index did not fit in its footer and was thinned; point reads in it read wider intervals (a larger IndexInterval, or MaxWrite, avoids it)",
			"segment", s.path, "kept_every", stride)
	}
	foot, err := s.w.Seal(footer)
	if err != nil {
		return err
	}
	l.statsMu.Lock()
	l.addSealedStats(s.w.Stats())
	if l.retiring == s {
		l.retiring = nil
	}
	s.w = nil
	l.statsMu.Unlock()
	s.mu.Lock()
	s.sealed, s.sealedAt = true, foot.Time
	s.keepSummary(foot)
	s.man = footerEntry(s, foot)
	s.mu.Unlock()
	s.visible.Store(&position{pos: foot.Pos, off: foot.Next})
	return nil
}

func (l *Log) addSealedStats(st wal.Stats) {
	for {
		old := l.sealed.Load()
		sum := addStats(*old, st)
		if l.sealed.CompareAndSwap(old, &sum) {
			return
		}
	}
}

// addStats returns the sum of two writers' counters.
func addStats(a, b wal.Stats) wal.Stats {
	a.Appends += b.Appends
	a.Records += b.Records
	a.FrameBytes += b.FrameBytes
	a.Writes += b.Writes
	a.WriteBytes += b.WriteBytes
	a.Syncs += b.Syncs
	a.SyncTime += b.SyncTime
	return a
}

func (l *Log) notifyDurable() {
	l.durMu.Lock()
	l.publishDurableLocked()
	l.wakeLocked()
	l.durMu.Unlock()
}

// wakeWaiters wakes Wait and WaitActive callers to look again (the log
// failed or closed: what they wait for may never come).
func (l *Log) wakeWaiters() {
	l.durMu.Lock()
	l.wakeLocked()
	l.durMu.Unlock()
}

func (l *Log) wakeLocked() {
	if l.durWaited { // no channel to spend on appends nobody waits for
		close(l.durCh)
		l.durCh, l.durWaited = make(chan struct{}), false
	}
}

// openDurable sets up the DURABLE file: a writer creates it and publishes
// where its active segment is durable; a read-only log maps it if it
// exists, and hides what the writer has not acknowledged yet.
func (l *Log) openDurable() error {
	if _, ok := l.dir.(*blockdev.OSDir); !ok {
		return nil
	}
	var err error
	if !l.opts.ReadOnly {
		if l.durable, err = createDurable(l.dir.Path()); err != nil {
			// Appends work without it; readers in other processes then
			// show none of the active segment while this writer lives.
			l.opts.Logger.Warn("segstore: cannot publish the acknowledged end for readers in other processes: until this writer closes they show none of its active segment; make "+durableName+" in the log's directory creatable and mappable",
				"dir", l.dir.Path(), "err", err)
			return nil
		}
		l.publishDurable()
		return nil
	}
	l.lookAtWriter()
	for _, s := range *l.segs.Load() {
		end, bounded := l.ackLimit(s)
		if !bounded || s.isSealed() {
			continue
		}
		// The words bound the file they were published for: the one this
		// open read only if its name still is that file now that they are
		// read. A rewrite renamed over it since (TruncateBack) has other
		// frames at those positions.
		if same, err := l.sameFile(s); err != nil || !same {
			return errors.Join(err, fmt.Errorf("%w: segment %s was removed or replaced while this read-only open read it", ErrRewritten, s.name))
		}
		if s.vis().pos > end.pos {
			s.hideFrom(end)
		}
	}
	return nil
}

// publishDurable tells read-only logs in other processes where the
// active segment is durable.
func (l *Log) publishDurable() {
	l.durMu.Lock()
	l.publishDurableLocked()
	l.durMu.Unlock()
}

// publishDurableLocked publishes the active segment's durable end; while
// a roll has retired a segment and not sealed it yet, that segment's end
// instead: readers in other processes see the roll when the seal is done
// (a segment followed by another but without its footer would look like
// one a crash left unsealed, and they would take it as sealed).
func (l *Log) publishDurableLocked() {
	if l.durable == nil || l.opts.ReadOnly {
		return
	}
	if segs := *l.segs.Load(); len(segs) > 0 {
		s := segs[len(segs)-1]
		if n := len(segs); n > 1 && segs[n-2].retired.Load() && !segs[n-2].isSealed() {
			s = segs[n-2]
		}
		l.durable.publish(s.base, s.vis())
	}
}

// Append writes records as one batch (one frame, atomic after a crash) and
// returns the offset of the first. In SyncAlways mode it returns after the
// batch is durable.
//
// An error means the batch is not acknowledged (after a failed write or
// fdatasync its bytes may still reach the disk; the log then refuses
// appends until reopened, and the reopened log shows whether they did).
// Once the batch is acknowledged, Append returns its offset even if the
// roll it then triggers fails: that failure stops the log (it takes no
// more changes until reopened) and is what every later call returns.
func (l *Log) Append(records ...[]byte) (first uint64, err error) {
	return l.append(records, true)
}

// append is Append; makeRoom: a batch too large for the active segment
// but within the log's MaxWrite may replace the segment (once).
func (l *Log) append(records [][]byte, makeRoom bool) (first uint64, err error) {
	if r := l.rolling.Load(); r != nil {
		<-r.created // the active segment is full: wait for the next one
	}
	l.mu.RLock()
	if err := l.writableLocked(); err != nil {
		l.mu.RUnlock()
		return 0, err
	}
	s := l.active
	copied := l.copyForFresh(records)
	first, err = s.w.Append(records...)
	if err != nil {
		copied.finish(l, records, false)
	}
	if makeRoom && errors.Is(err, wal.ErrBatchTooLarge) && wal.BatchFits(records, l.opts.MaxWrite, int64(s.dev.Alignment().Block)) {
		// s was created with a smaller MaxWrite (an earlier open's): a
		// batch within the log's own limit goes into a new segment.
		l.mu.RUnlock()
		if err := l.makeRoomFor(s); err != nil {
			return 0, err
		}
		return l.append(records, false)
	}
	if err != nil {
		l.mu.RUnlock()
		return 0, err
	}
	l.fresh.insert(s.ns, first, len(records), copied.finish(l, records, true))
	roll, prepare := l.shouldRollLocked(s)
	if prepare {
		l.prepareSpareLocked(s)
	}
	if roll {
		l.startRollLocked(s)
	}
	l.mu.RUnlock()
	return first, nil
}

// freshAside: a batch of at least this many bytes is copied for the
// write-through cache by another goroutine while Append writes and syncs
// it, off the appender's path (a 1 MiB copy is about a tenth of a 1 MiB
// durable append); a smaller one is copied after, where a hand-off would
// cost about what the copy does.
//
// The copies made beside a write are bounded, in all, by the
// write-through cache's own bound (fresh.aside): a copy is held from
// before the append waits for room in the writer's buffer until it
// returns, so without a bound every appender waiting would hold one (48
// appenders of 1 MiB held 54 MiB of the cache's memory outside its
// budget). A batch that finds the bound taken is copied after its write,
// as a small one is.
const freshAside = 256 << 10

// freshCopy is the copy of a batch for the write-through cache that
// copyForFresh started, of n bytes of records; done is nil when it is
// made by finish, after the write.
type freshCopy struct {
	done chan *cache.Value
	n    int
}

// copyForFresh starts the copy of records that Append keeps in the
// write-through cache beside the write, if the batch is large enough and
// the bound on such copies allows. The caller calls finish once, before
// records can change (before Append returns). A small batch costs no
// allocation here.
func (l *Log) copyForFresh(records [][]byte) freshCopy {
	n := 0
	for _, r := range records {
		n += len(r)
	}
	if n < freshAside || !l.fresh.takeAside(n) {
		return freshCopy{}
	}
	c := freshCopy{done: make(chan *cache.Value, 1), n: n}
	go func() { c.done <- l.fresh.copyOf(l.cache, records) }()
	return c
}

// finish returns the copy of records, made now if it was not made beside
// the write (nil: none is kept); with keep false it drops it.
func (c freshCopy) finish(l *Log, records [][]byte, keep bool) *cache.Value {
	if c.done == nil {
		if !keep {
			return nil
		}
		return l.fresh.copyOf(l.cache, records)
	}
	v := <-c.done
	l.fresh.aside.Add(-int64(c.n))
	if !keep && v != nil {
		v.Release()
		v = nil
	}
	return v
}

// pendingRoll is a roll of segment s that an append triggered; created is
// closed once s takes no more appends (the next segment does, or the roll
// found nothing to do or failed).
type pendingRoll struct {
	s       *segment
	created chan struct{}
}

// startRollLocked starts a goroutine that rolls s, the full active
// segment, unless a roll is under way. The caller holds mu shared: Close,
// which waits for the goroutine, cannot have begun.
func (l *Log) startRollLocked(s *segment) {
	r := &pendingRoll{s: s, created: make(chan struct{})}
	if !l.rolling.CompareAndSwap(nil, r) {
		return
	}
	l.bg.Add(1)
	go l.rollInBackground(r)
}

// rollInBackground rolls r.s, unless it is no longer the active segment or
// the log stopped taking changes. Appends wait only for the next segment's
// creation; the seal, the manifest and retention follow with appends going
// on. A failure stops the log (logged by fail): the appender that
// triggered the roll was acknowledged already.
func (l *Log) rollInBackground(r *pendingRoll) {
	defer l.bg.Done()
	l.testHook("start")
	l.changeMu.Lock()
	defer l.changeMu.Unlock()
	l.mu.Lock()
	cut := false
	if l.writableLocked() == nil && l.active == r.s && r.s.w.NextOffset() != r.s.base {
		cut = l.cutLocked(r.s) == nil
	}
	l.rolling.Store(nil)
	close(r.created)
	l.mu.Unlock()
	if cut {
		l.testHook("cut")
		_ = l.finishRoll(r.s)
	}
}

// truncStep runs truncHook at a step of a TruncateBack (nil outside tests).
func (l *Log) truncStep(step string) {
	if l.truncHook != nil {
		l.truncHook(step)
	}
}

func (l *Log) testHook(step string) {
	if l.rollHook != nil {
		l.rollHook(step)
	}
}

// shouldRollLocked reports whether s, the active segment, is full (or too
// old), and whether it is a quarter full (time to prepare the next file). The
// caller holds l.mu (shared is enough): it reads s.w.
func (l *Log) shouldRollLocked(s *segment) (roll, prepare bool) {
	s.mu.RLock()
	last := s.index[len(s.index)-1]
	first := s.index[0]
	entries := len(s.index)
	s.mu.RUnlock()
	prepare = last.pos >= l.opts.SegmentSize/4
	if last.pos+int64(l.opts.MaxWrite) >= l.opts.SegmentSize {
		return true, prepare
	}
	// A segment written under other options (a smaller MaxWrite, a
	// narrower IndexInterval) can fill its footer first.
	if entries >= s.footerFits(s.w.MaxBatchBytes())-footerSpare {
		return true, prepare
	}
	return l.opts.SegmentAge > 0 && l.opts.Now().Sub(time.Unix(0, first.time)) >= l.opts.SegmentAge, prepare
}

// fail records a change that stopped halfway: the log refuses further
// changes until it is reopened (recovery finishes or undoes it).
func (l *Log) fail(what string, err error) error {
	l.failed = &failure{what: what, err: err}
	if a := l.active; a != nil && a.w != nil {
		// Its records are written and synced (in SyncNever and SyncInterval
		// modes they may be in its buffer still), its goroutines stopped.
		// An error here is the failure's, or follows from it.
		_ = a.w.Close()
		l.addSealedStats(a.w.Stats())
		a.w = nil
	}
	l.active = nil
	l.wakeWaiters() // a Wait for what will never be durable returns the failure
	// Said here too: a roll that Append triggers fails after its batch was
	// acknowledged, so the caller learns of it only at its next call.
	l.opts.Logger.Error("segstore: the log stopped taking changes", "dir", l.dir.Path(), "err", l.failed)
	return l.failed
}

// Roll seals the active segment now and starts a new one (an empty active
// segment is left as it is).
func (l *Log) Roll() error {
	l.mu.RLock()
	s, err := l.active, l.writableLocked()
	l.mu.RUnlock()
	if err != nil {
		return err
	}
	return l.rollIf(s)
}

// rollIf seals s and starts the next segment, unless s is no longer the
// active segment (another goroutine rolled it) or holds no records. It
// returns once s is sealed.
func (l *Log) rollIf(s *segment) error {
	l.changeMu.Lock()
	defer l.changeMu.Unlock()
	l.mu.Lock()
	if err := l.writableLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	if l.active != s || s.w.NextOffset() == s.base {
		l.mu.Unlock()
		return nil
	}
	err := l.cutLocked(s)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	return l.finishRoll(s)
}

// makeRoomFor replaces s, the active segment, by one created with the
// log's options, for a batch that fits them but not s (written with a
// smaller MaxWrite): s is rolled, or, if it holds no records, removed
// and created again (as TruncateBack at a segment's start does). Nothing
// happens if s is no longer the active segment.
func (l *Log) makeRoomFor(s *segment) error {
	if s.w.NextOffset() != s.base {
		return l.rollIf(s)
	}
	defer l.lockChange()()
	if err := l.writableLocked(); err != nil {
		return err
	}
	if l.active != s {
		return nil
	}
	if err := s.w.Close(); err != nil {
		return l.fail("closing the empty segment "+s.name, err)
	}
	l.addSealedStats(s.w.Stats())
	s.w, l.active = nil, nil
	segs := *l.segs.Load()
	if err := l.dropLocked([]*segment{s}, segs[:len(segs)-1]); err != nil {
		return l.fail("removing the empty segment "+s.name, err)
	}
	if err := l.startActiveLocked(s.base); err != nil {
		return l.fail("creating the segment at "+s.name, err)
	}
	l.notifyDurable()
	return nil
}

// cutLocked is the first half of a roll: it makes s, the active segment
// holding records, durable to its end, and creates the next segment, which
// takes appends from then on. s is left unsealed (retired) for finishRoll.
// The caller holds changeMu and mu exclusively (no append is in flight).
//
// s must be durable first: a crash must never leave records of the next
// segment durable after a gap in s (open would find records missing). In
// SyncAlways mode it already is (every append to it returned).
func (l *Log) cutLocked(s *segment) error {
	if err := s.w.Sync(); err != nil {
		return l.fail("syncing segment "+s.name+" before rolling it", err)
	}
	next, err := l.createSegment(s.vis().off, true)
	if err != nil {
		return l.fail("creating the segment after "+s.name, err)
	}
	s.retired.Store(true)
	l.statsMu.Lock()
	l.retiring = s
	l.statsMu.Unlock()
	segs := append(slices.Clone(*l.segs.Load()), next)
	l.segs.Store(&segs)
	l.active = next
	l.notifyDurable() // readers in other processes learn of the next segment
	return nil
}

// finishRoll is the second half of a roll, run with appends going on in
// the next segment: it seals s, writes the manifest, and applies
// retention. The caller holds changeMu, not mu. A crash before the seal's
// commit point leaves s unsealed before the next segment, which open
// seals (Recovery.Resealed); before the manifest's, an older manifest,
// which costs open the reading of s's footer. A failure stops the log.
func (l *Log) finishRoll(s *segment) error {
	if err := l.seal(s); err != nil {
		return l.failAfterRoll("sealing segment "+s.name, err)
	}
	l.notifyDurable() // wakes WaitActive callers on the sealed segment
	l.noteOpen(s)
	// Committed by the next directory fsync (the next roll's creation, or
	// Close's): until then an older manifest, which is only slower.
	if err := l.writeManifest(false); err != nil {
		return l.failAfterRoll("writing the manifest after sealing "+s.name, err)
	}
	if err := l.applyRetentionLocked(); err != nil {
		// A deletion may have stopped halfway (START written, files not all
		// removed, or a directory fsync failed): reopening finishes it.
		return l.failAfterRoll("applying retention after sealing "+s.name, err)
	}
	return nil
}

// failAfterRoll is fail for the second half of a roll, which runs without
// mu. The retired segment's writer, if its seal failed, is closed too (its
// goroutines stopped).
func (l *Log) failAfterRoll(what string, err error) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.statsMu.Lock()
	if r := l.retiring; r != nil {
		_ = r.w.Close() // its error is the seal's
		l.addSealedStats(r.w.Stats())
		r.w, l.retiring = nil, nil
	}
	l.statsMu.Unlock()
	return l.fail(what, err)
}

// Read appends the record at offset to dst and returns it. Records are
// visible once durable. A read-only log's read of a segment file its
// writer has since removed fails with ErrOutOfRange, and of one it has
// since rewritten (TruncateBack) with an error wrapping ErrRewritten:
// reopen the log.
func (l *Log) Read(offset uint64, dst []byte) ([]byte, error) {
	if l.isClosed.Load() {
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
		if l.isClosed.Load() {
			// Close sets isClosed before it drops the segments: a Close
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
	if t != nil && l.isClosed.Load() { // Close let go of the tail before this read kept one
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

// DurableOffset: every offset below it is durable (and readable).
func (l *Log) DurableOffset() uint64 {
	segs := *l.segs.Load()
	if len(segs) == 0 {
		return 0
	}
	return segs[len(segs)-1].vis().off
}

// Wait returns once offset is durable (DurableOffset() > offset), or when
// ctx is done. If offset can no longer become durable it returns at once
// (a Wait in progress wakes): ErrClosed once the log is closed; once the
// log has stopped taking appends (a failed write, fdatasync, roll or
// truncation), that failure, until the log is reopened.
func (l *Log) Wait(ctx context.Context, offset uint64) error {
	return l.waitUntil(ctx, func() (bool, error) {
		if l.DurableOffset() > offset {
			return true, nil
		}
		err := l.stopped()
		return err != nil, err
	})
}

// stopped returns why the log will make nothing more durable: ErrClosed,
// or the failure that stopped it; nil while it works (or is read-only and
// open, when its writer may still append).
func (l *Log) stopped() error {
	if l.isClosed.Load() {
		return ErrClosed
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	switch {
	case l.failed != nil:
		return l.failed
	case l.active != nil && l.active.w != nil:
		if err := l.active.w.Err(); err != nil {
			return fmt.Errorf("engine: segment %s stopped taking appends; reopen the log to recover: %w", l.active.path, err)
		}
	}
	return nil
}

// waitUntil returns once check says it is done (with check's error),
// looking again whenever durability advances, a segment is sealed, the
// log's end is cut, the log fails or is closed; or when ctx is done.
func (l *Log) waitUntil(ctx context.Context, check func() (bool, error)) error {
	for {
		l.durMu.Lock()
		ch := l.durCh
		l.durWaited = true
		l.durMu.Unlock()
		if done, err := check(); done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Sync returns once every record appended so far is durable.
//
// It also waits for a roll those appends started: when it returns, the
// segments they filled are sealed (and retention has run).
func (l *Log) Sync() error {
	if err := l.syncActive(); err != nil {
		return err
	}
	if r := l.rolling.Load(); r != nil {
		<-r.created
	}
	l.changeMu.Lock() // held by a roll until its seal, manifest and retention are done
	defer l.changeMu.Unlock()
	return l.failed // a failure of that roll
}

func (l *Log) syncActive() error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.isClosed.Load() {
		return ErrClosed
	}
	if l.failed != nil {
		return l.failed
	}
	if l.active == nil {
		return nil // read-only: nothing to sync
	}
	return l.active.w.Sync()
}

// SegmentInfo describes one segment.
type SegmentInfo struct {
	Base    uint64 // first offset
	Next    uint64 // offset after the last durable record
	Bytes   int64  // file size; for a sealed file, where its footer ends (what a view exports)
	DataEnd int64  // file position where the durable records end (a sealed file's footer starts there)
	Sealed  bool
	File    string
	// FirstTime is when the first record was appended, SealedAt when the
	// segment was sealed (zero while active).
	FirstTime, SealedAt time.Time
	// IndexEntries is the size of the sparse index; -1 for a sealed segment
	// whose file has not been read since open (trusted through the manifest).
	IndexEntries int
	// FooterCRC is the CRC-32C of a sealed segment's footer bytes (which
	// hold its range, sizes and index): with Bytes, it identifies the
	// file's contents (frames carry their own checksums). 0 while active.
	FooterCRC uint32
	// SegmentID is the random identity in the file's header, new for every
	// file the engine writes (a segment rewritten by TruncateBack gets a new
	// one, an imported file keeps its source's, byte for byte): two files
	// with the same footer but other records differ in it. Set in a
	// SegmentView's Info, which holds the file; 0 from Segments, which
	// reads no file.
	SegmentID uint64
}

// ExportSize is how many bytes of the file a SegmentView exports: a
// sealed file whole, the active one up to its durable end.
func (si SegmentInfo) ExportSize() int64 {
	if si.Sealed {
		return si.Bytes
	}
	return si.DataEnd
}

// StorageInfo describes how the log's files are accessed.
type StorageInfo struct {
	Direct     bool   // O_DIRECT (false: the buffered fallback)
	Filesystem string // e.g. "ext4"; "" if unknown
	Alignment  blockdev.Alignment
}

// Dir is the path of the log's directory ("sim" for a simulated one).
func (l *Log) Dir() string { return l.dir.Path() }

// Options returns the options the log runs with: those given to Open,
// with each zero field filled with its default (or the value derived for
// it, as MaxWrite and IndexInterval are).
func (l *Log) Options() Options { return l.opts }

// Storage describes the files of the newest segment.
func (l *Log) Storage() StorageInfo {
	segs := *l.segs.Load()
	if len(segs) == 0 || !segs[len(segs)-1].acquire() {
		return StorageInfo{}
	}
	s := segs[len(segs)-1]
	defer s.done()
	if l.ensure(s) != nil {
		return StorageInfo{}
	}
	si := StorageInfo{Direct: s.dev.Direct(), Alignment: s.dev.Alignment()}
	if fs, ok := s.dev.(interface{ Filesystem() string }); ok {
		si.Filesystem = fs.Filesystem()
	}
	return si
}

// Segments lists the segments, oldest first.
func (l *Log) Segments() []SegmentInfo {
	segs := *l.segs.Load()
	out := make([]SegmentInfo, len(segs))
	for i, s := range segs {
		out[i] = s.info()
	}
	return out
}

// Stats are counters of the log's work since Open.
type Stats struct {
	Appends, Records int64 // batches and records appended
	Writes, Syncs    int64 // device writes and fdatasyncs
	MeanBatch        float64
	MeanSync         time.Duration
	Cache            cache.Stats
	Segments         int
	Bytes            int64 // segment files on disk
	StartOffset      uint64
	EndOffset        uint64
	DurableOffset    uint64
	// LastOpenRecovery is what Open found and did, as it was when Open
	// returned; it never changes after (each call returns a copy of it).
	LastOpenRecovery Recovery
	// RebuiltFootersSinceOpen: sealed segments trusted at Open without
	// reading their footer (through the manifest), or opened by Refresh,
	// whose footer was found damaged when their file was opened after
	// Open, in the order found, each once. They are served from an index
	// rebuilt from their records; a writer's next open rebuilds each
	// footer on disk and reports it in LastOpenRecovery.RebuiltFooters.
	RebuiltFootersSinceOpen []uint64
	// Exported bytes (SegmentView and Section WriteTo): sent by sendfile to
	// a socket, or copied (any other writer, e.g. TLS or a buffer).
	ExportSendfileBytes, ExportCopiedBytes int64
	// SyncLatency: fdatasync durations in seconds; FlushBatch: appends per
	// group-commit flush. Since Open.
	SyncLatency, FlushBatch Histogram
	// PointReads: Read calls that returned a record. ReadDeviceBytes: the
	// bytes they read from the device (whole aligned reads), so
	// ReadDeviceBytes/PointReads is a point read's amplification.
	// FreshHits: of them served from the batches appended last, with no
	// device read and no cache lookup; ReadAheadHits: served from chunks
	// read ahead of a run of sequential reads, whose device reads
	// (ReadAheadBytes) are in ReadDeviceBytes too.
	PointReads, ReadDeviceBytes, FreshHits int64
	ReadAheadHits, ReadAheadBytes          int64
}

// Stats returns the counters.
func (l *Log) Stats() Stats {
	// The sealed sum, the retired segment's and the active writer's
	// counters are read under one hold of l.mu: a roll's cut (which makes
	// the active segment the retired one) holds it exclusively, and its
	// seal moves the retired segment's counters into the sealed sum under
	// statsMu; so each move is wholly before or after, and the counters
	// never go back.
	l.mu.RLock()
	l.statsMu.Lock()
	w := *l.sealed.Load()
	if r := l.retiring; r != nil {
		w = addStats(w, r.w.Stats())
	}
	l.statsMu.Unlock()
	if l.active != nil && l.active.w != nil {
		w = addStats(w, l.active.w.Stats())
	}
	l.mu.RUnlock()
	l.reportMu.Lock()
	rebuilt := slices.Clone(l.rebuiltSince)
	l.reportMu.Unlock()
	st := Stats{RebuiltFootersSinceOpen: rebuilt, Appends: w.Appends, Records: w.Records, Writes: w.Writes, Syncs: w.Syncs,
		Cache: l.cache.Stats(), StartOffset: l.StartOffset(), EndOffset: l.EndOffset(),
		DurableOffset: l.DurableOffset(), LastOpenRecovery: l.report.clone(), // final since Open returned
		ExportSendfileBytes: l.exportSendfile.Load(), ExportCopiedBytes: l.exportCopied.Load(),
		SyncLatency: l.syncHist.snapshot(), FlushBatch: l.batchHist.snapshot(),
		PointReads: l.pointReads.Load(), ReadDeviceBytes: l.readDeviceBytes.Load(),
		ReadAheadHits: l.ra.hits.Load(), ReadAheadBytes: l.ra.bytes.Load()}
	if l.fresh != nil {
		st.FreshHits = l.fresh.hits.Load()
	}
	if w.Writes > 0 {
		st.MeanBatch = float64(w.Appends) / float64(w.Writes)
	}
	if w.Syncs > 0 {
		st.MeanSync = w.SyncTime / time.Duration(w.Syncs)
	}
	for _, si := range l.Segments() {
		st.Segments++
		st.Bytes += si.Bytes
	}
	return st
}

// Close syncs and closes the active segment and every file. Reads after
// Close fail.
func (l *Log) Close() error {
	l.changeMu.Lock() // a roll in progress finishes first
	l.mu.Lock()
	if l.isClosed.Swap(true) {
		l.mu.Unlock()
		l.changeMu.Unlock()
		return ErrClosed
	}
	var err error
	if l.active != nil && l.active.w != nil {
		if err = l.active.w.Close(); err == nil && l.failed == nil {
			err = l.recordCleanClose(l.active)
		}
	}
	l.dropSpare()
	if !l.opts.ReadOnly {
		l.durMu.Lock()
		if l.durable != nil {
			l.publishDurableLocked()
			l.durable.close(true)
			l.durable = nil
		}
		l.durMu.Unlock()
	}
	l.mu.Unlock()
	l.changeMu.Unlock()
	l.bg.Wait()        // a roll goroutine that had not begun finds the log closed
	l.bufs.Release()   // every writer is closed: a closed log holds no write buffer
	l.wakeWaiters()    // Wait returns ErrClosed, WaitActive returns
	l.refreshMu.Lock() // a Refresh in progress finishes with the files open
	l.closeFiles()
	l.forgetFiles()
	if l.durable != nil && l.opts.ReadOnly {
		l.durable.close(false)
		l.durable = nil
	}
	l.refreshMu.Unlock()
	l.closeReadAhead()
	l.keepTail(nil)
	l.indexRuns.drop()
	l.fresh.release()
	l.release()
	return err
}

// recordCleanClose writes the manifest with where the closed active
// segment s ends and its index, so the next open reads none of its
// records (nor its preallocated tail). s.w is closed (everything synced).
func (l *Log) recordCleanClose(s *segment) error {
	size, err := s.dev.Size()
	if err != nil {
		return err
	}
	end := s.vis()
	index, _ := s.encodeFooter(end.off, end.pos, math.MaxInt32) // never thinned
	s.mu.RLock()
	lastRec := s.lastRec
	s.mu.RUnlock()
	clean := &cleanEnd{base: s.base, end: end.pos, size: size, next: end.off, lastTime: s.w.LastTime(), lastRec: lastRec, index: index}
	l.manifestMu.Lock()
	defer l.manifestMu.Unlock()
	return l.putManifestLocked(encodeManifest(l.manifestEntries(), clean), true)
}

// closeFiles drops the log's references: each file closes now, or when its
// last reader lets go.
func (l *Log) closeFiles() {
	if p := l.segs.Swap(&[]*segment{}); p != nil {
		for _, s := range *p {
			s.release()
		}
	}
}
