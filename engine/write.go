package engine

import (
	"errors"
	"slices"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

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
		OnFail:  func(error) { l.writerFailed(s) },
		Version: formatVersion,
		Buffers: &l.bufs,
	}
	if !l.opts.NoPreallocate {
		o.Preallocate, o.PreZero = l.opts.SegmentSize, true
	}
	return o
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

// fail records a change that stopped halfway: the log is failed and
// refuses further changes until it is reopened (recovery finishes or
// undoes it). The caller holds changeMu, and mu exclusively.
func (l *Log) fail(what string, err error) error {
	l.failed = &failure{what: what, err: err}
	l.enterLocked(stateFailed)
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
	// s.w is read under mu: the caller let go of it, and another
	// appender's roll may have sealed s (clearing s.w) since, or appended
	// to it.
	unlock := l.lockChange()
	if err := l.writableLocked(); err != nil {
		unlock()
		return err
	}
	if l.active != s {
		unlock()
		return nil // replaced meanwhile: the caller appends to the new one
	}
	if s.w.NextOffset() != s.base {
		unlock()
		return l.rollIf(s)
	}
	defer unlock()
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
	l.pushLocked(next)
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
	switch l.loadState() {
	case stateClosed:
		return ErrClosed
	case stateReadOnly:
		return nil // nothing to sync
	case stateFailed:
		if l.failed != nil {
			return l.failed
		}
		// The active writer failed: its Sync returns why.
	}
	return l.active.w.Sync()
}

// writableLocked returns why the log takes no change now (see logState),
// or nil; the caller holds mu (shared is enough). The first change of a
// log opened from a clean close record removes the record first.
func (l *Log) writableLocked() error {
	switch l.loadState() {
	case stateClosed:
		return ErrClosed
	case stateReadOnly:
		return ErrReadOnly
	case stateFailed:
		if l.failed != nil {
			return l.failed
		}
		// Only the active writer failed: a change that needs it meets its
		// sticky error, as an append does.
	}
	if l.cleanPending.Load() {
		return l.dropCleanRecord()
	}
	return nil
}

// The segment list is copy-on-write: readers load l.segs with no lock and
// may keep the slice, so a change never writes into a published one.
// Every change of a live log is one of the three primitives below, each a
// single store of a new slice: the point where readers of this process
// see the change. A segment that leaves the list is marked gone there
// (iterators holding it move on) and loses the list's reference (its file
// closes with its last reader), whatever the change does next, so a
// change that fails half-way never leaves a listed segment released nor
// a released one listed. The caller holds mu exclusively, and changeMu
// too where files change (a read-only log's Refresh holds followed.mu).
//
// publishLocked stores segs, a slice nobody else holds, as the list, and
// lets go of left, the segments no longer in it.
func (l *Log) publishLocked(segs []*segment, left ...*segment) {
	l.segs.Store(&segs)
	for _, s := range left {
		s.gone.Store(true)
		s.release()
	}
}

// pushLocked adds s, a new segment after the last, as the active one.
func (l *Log) pushLocked(s *segment) {
	l.publishLocked(append(slices.Clone(*l.segs.Load()), s))
	l.active = s
}

// replaceLastLocked puts s in place of the last segment (a file of the
// same base rewritten or imported over it), which it lets go of. It does
// not change l.active.
func (l *Log) replaceLastLocked(s *segment) {
	segs := *l.segs.Load()
	old := segs[len(segs)-1]
	l.publishLocked(append(slices.Clone(segs[:len(segs)-1]), s), old)
}
