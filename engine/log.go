// Package engine is the segment log: records with dense uint64 offsets in
// segment files named by base offset, written through the wal group-commit
// writer, sealed with a self-describing footer (sparse index), and read
// through segstore's own cache with O_DIRECT.
package engine

import (
	"math"
	"sync"
	"sync/atomic"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

// Log is an append-only log of records. All methods are safe for
// concurrent use.
//
// Its fields are grouped by what guards them. Locks are taken in the
// order changeMu, mu, then any one of statsMu, durMu, spareMu,
// manifestMu, reportMu (followed.mu is taken by Refresh and Close, never
// with mu held). Where a log stands (writable, read-only, failed, closed)
// is state; see logState.
type Log struct {
	// Immutable after Open: set by Open before the log is shared, never
	// changed after. (fresh, bufs, files, ra, indexHints, indexRuns and
	// followed are set up here too and guard their own insides; the hooks
	// are set by tests only, before the log is used.)
	opts      Options
	dir       blockdev.Dir
	caps      dirCaps // what dir offers beyond blockdev.Dir
	cache     *cache.Cache
	ownCache  bool
	unlock    func() error
	readPool  *alignedbuf.Pool // aligned buffers for point-read misses (copied into the cache)
	raPool    *alignedbuf.Pool // aligned buffers of read-ahead reads
	syncHist  *hist            // fdatasync latency
	batchHist *hist            // appends per flush
	// fresh: the batches appended last, served without a device read (nil
	// for a read-only log).
	fresh *fresh
	// bufs: the write buffers the segments' writers hand on at each roll.
	bufs       wal.Buffers
	files      openFiles  // the sealed segments whose files are open, bounded
	ra         readAheads // sequential point reads (readahead.go)
	indexHints indexHints // sealedindex.go
	indexRuns  indexRuns  // sealedindex.go
	followed   follower   // what a read-only log knows of the writer beside it; guarded by followed.mu
	// rollHook runs at named steps of a roll an append triggered: "start"
	// (in its goroutine, before anything is locked) and "cut" (the next
	// segment takes appends; the old one is not sealed yet).
	rollHook func(step string)
	// truncHook runs at each step of a TruncateBack that changes the files
	// or DURABLE, with the writer's locks held: "hidden" (DURABLE says
	// nothing of the segment cut into is durable), "removed NAME" (each
	// segment file dropped, once removed; TruncateFront and retention,
	// which drop files the same way, run it too), "prefix" (the kept
	// records are durable in NAME.tmp), "renamed" (NAME.tmp is NAME),
	// "synced" (the directory fsync after the rename), "reopened" (the
	// rewrite is the active segment) or, at a segment boundary, "started"
	// (the new active segment exists), and "published" (DURABLE holds the
	// new end).
	truncHook func(step string)
	// refreshHook runs at named steps of a look (under followed.mu): after
	// it read the writer's words ("words"), after it listed the directory
	// ("listed", with the segment files listed), and after it checked the
	// segments it knows against the listing and its last one's file
	// ("known"), before it follows the files.
	refreshHook func(step string, bases *[]uint64)

	// changeMu serializes the changes to the log's files and segment list
	// other than appends: a roll (from the creation of its next segment
	// until the old one is sealed, the manifest written and retention
	// applied), truncations, imports and Close. It is taken before mu.
	// A roll's second half (finishRoll: the seal, the manifest, retention)
	// runs under changeMu alone, with appends going on.
	changeMu sync.Mutex
	bg       sync.WaitGroup // roll goroutines; Close waits for them

	// mu: Append holds it shared; a roll holds it exclusively only while
	// it makes the next segment the active one (no append is then in
	// flight), truncations, imports and Close for their whole change.
	// Readers never take it.
	mu sync.RWMutex
	// Guarded by mu.
	//
	// active is the segment appends go to. Its writer (active.w) is
	// guarded by mu too: set and cleared with mu held exclusively, used
	// with mu held (shared is enough). nil for a read-only log, and after
	// a change stopped halfway (state failed, failed set); a closed log
	// keeps it, its writer closed.
	active *segment
	// failed: why a change stopped halfway (a roll, truncation or
	// import); set once, with changeMu held too, so it may be read under
	// either lock. nil while the log works, and when only the active
	// writer failed.
	failed error
	// state is a logState. An atomic, read without a lock; written with mu
	// held exclusively (enterLocked), or by the active writer's OnFail
	// hook from writable to failed only (writerFailed).
	state atomic.Uint32

	// Atomics, read and written without a lock.
	//
	// segs: an immutable snapshot of the segments, ascending by base;
	// every change stores a new slice (publishLocked, pushLocked,
	// replaceLastLocked; closeFiles at Close): by Open, with changeMu
	// held (a writer's changes), or under followed.mu (Refresh, and
	// Close's final drop of the files).
	segs  atomic.Pointer[[]*segment]
	start atomic.Uint64 // first retained offset (TruncateFront, retention)
	// rolling is the roll an append triggered, run by a goroutine of its
	// own (so the appender returns once its batch is durable): appends
	// wait for its next segment instead of filling the full one further.
	rolling atomic.Pointer[pendingRoll]
	// sealed: the summed counters of the writers that are gone (sealed,
	// closed); a writer's counters move into it when it goes (see statsMu).
	sealed atomic.Pointer[wal.Stats]
	// tail: the growing last index interval of the active segment (or of
	// a read-only log's last one) as a read last built it, not in the
	// cache, whose values never change, so reads of the newest records
	// (raft's GetLog of what it just stored) do not go to the disk each
	// time. One per log: only the newest segment grows, and a chunk of an
	// older one is never kept after its segment stops growing.
	tail atomic.Pointer[tailChunk]
	// cleanPending: the manifest on disk still holds the clean close record
	// this log was opened from; the first change removes it first.
	cleanPending atomic.Bool
	// Point reads: Read calls that returned a record, and the bytes they
	// read from the device (read-ahead included).
	pointReads, readDeviceBytes atomic.Int64
	// indexReadBytes: the part of readDeviceBytes that read sealed
	// segments' index blocks (sealedindex.go); indexHits, indexMisses:
	// the cache's hits and misses that were lookups of index blocks.
	indexReadBytes, indexHits, indexMisses atomic.Int64
	exportSendfile                         atomic.Int64 // bytes exported by sendfile (Section.WriteTo to a socket)
	exportCopied                           atomic.Int64 // bytes exported by a copy (any other writer)
	manifestWrites                         atomic.Int64 // manifest writes so far (putManifest)

	// Guarded by statsMu, which also orders a writer's counters moving
	// into sealed (a seal, under statsMu) against Stats, which reads both.
	//
	// retiring is the segment a roll has retired and not sealed yet (its
	// writer's counters are neither the active segment's nor in sealed).
	// Its writer (retiring.w) is no longer guarded by mu: only the roll
	// (holding changeMu) uses it, and its seal clears it under statsMu,
	// under which Stats reads it.
	statsMu  sync.Mutex
	retiring *segment

	// Guarded by durMu.
	durMu     sync.Mutex
	durCh     chan struct{} // closed and replaced when durability advances, a segment is sealed or the end is cut, if durWaited
	durWaited bool          // a Wait took durCh
	// pub: the DURABLE file a writer publishes its acknowledged end to;
	// nil for a read-only log, in a simulated directory, and once closed.
	pub *durableFile

	// Guarded by spareMu.
	spareMu sync.Mutex
	spare   *spareFile // the next segment file, being prepared

	// manifestMu serializes manifest writes (it guards no field).
	manifestMu sync.Mutex

	// Guarded by reportMu. report is what Open found and did. Open's
	// segments, opened in parallel, note in it under reportMu; it is final
	// once Open returns (reportFinal), so Stats copies it without a lock.
	// What a segment opened later (a lazy load, Refresh, TruncateBack's
	// reopen) finds is not Open's: noteReport drops it, except a damaged
	// footer, which goes to rebuiltSince.
	reportMu     sync.Mutex
	reportFinal  bool     // Open has returned
	report       Recovery // written by Open (its parallel steps under reportMu), immutable once it returns
	rebuiltSince []uint64 // segments whose damaged footer a load after Open found, each once
}

// poolAlign is the alignment of pooled read buffers: it covers the direct
// I/O memory alignment of the devices seen (512 here, 4096 on 4Kn disks); a
// device that needs more gets freshly allocated buffers instead.
const poolAlign = 4096

// Dir is the path of the log's directory ("sim" for a simulated one).
func (l *Log) Dir() string { return l.dir.Path() }

// Files is the directory the log was opened on (Options.Dir, or the
// real directory Open named), for packages that keep files of their own
// beside the log's (the follower's stage, engine/peer.StageFile). They
// must use names the log does not (segment files, %020d.seg; MANIFEST,
// START, DURABLE, LOCK; and no name ending in .tmp, which a writer's
// open removes as a leftover of a crash), and never open, change, rename
// or remove the log's own files: the log lists, opens and removes only
// the names it knows, and leaves every other name alone.
func (l *Log) Files() blockdev.Dir { return l.dir }

// Options returns the options the log runs with: those given to Open,
// with each zero field filled with its default (or the value derived for
// it, as MaxWrite and IndexInterval are).
func (l *Log) Options() Options { return l.opts }

// Close syncs and closes the active segment and every file. Reads after
// Close fail.
func (l *Log) Close() error {
	l.changeMu.Lock() // a roll in progress finishes first
	l.mu.Lock()
	was := l.enterLocked(stateClosed) // before anything is let go: readers see it first
	if was == stateClosed {
		l.mu.Unlock()
		l.changeMu.Unlock()
		return ErrClosed
	}
	var err error
	if l.active != nil && l.active.w != nil { // writable, or failed by its writer alone
		// A clean close record only for a log that is wholly well: a
		// failed writer's Close fails too.
		if err = l.active.w.Close(); err == nil && was == stateWritable {
			err = l.recordCleanClose(l.active)
		}
	}
	l.dropSpare()
	if was != stateReadOnly {
		l.durMu.Lock()
		if l.pub != nil {
			l.publishDurableLocked()
			l.pub.close(true)
			l.pub = nil
		}
		l.durMu.Unlock()
	}
	l.mu.Unlock()
	l.changeMu.Unlock()
	l.bg.Wait()          // a roll goroutine that had not begun finds the log closed
	l.bufs.Release()     // every writer is closed: a closed log holds no write buffer
	l.wakeWaiters()      // Wait returns ErrClosed, WaitActive returns
	l.followed.mu.Lock() // a Refresh in progress finishes with the files open
	l.closeFiles()
	l.forgetFiles()
	if l.followed.durable != nil && was == stateReadOnly {
		l.followed.durable.close(false)
		l.followed.durable = nil
	}
	l.followed.mu.Unlock()
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
