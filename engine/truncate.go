package engine

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/wal"
)

// loadStart reads START, the first retained offset, and (unless read-only)
// removes the segments wholly below it that a crash left behind.
func (l *Log) loadStart() error {
	b, err := readMeta(l.dir, startName, metaStart)
	if isNotExist(err) {
		return nil
	}
	if err == nil {
		err = l.setStart(b)
	}
	if err != nil {
		return err
	}
	if l.openedReadOnly() {
		return nil
	}
	return l.dropBelowLocked(l.start.Load())
}

// setStart takes the start offset from START's payload b.
func (l *Log) setStart(b []byte) error {
	first, err := layout.DecodeStart(b)
	if err != nil {
		return &CorruptionError{File: filepath.Join(l.dir.Path(), startName), Op: "open", Err: err}
	}
	l.start.Store(first)
	return nil
}

// TruncateFront drops the records below before: reads of them fail with
// ErrOutOfRange from now on, and segment files wholly below before are
// deleted (once no reader uses them). The new start is durable when
// TruncateFront returns (START file: write, fdatasync, rename, directory
// fsync; the rename's directory fsync is the commit point).
func (l *Log) TruncateFront(before uint64) error {
	defer l.lockChange()()
	if err := l.writableLocked(); err != nil {
		return err
	}
	return l.truncateFrontLocked(before)
}

func (l *Log) truncateFrontLocked(before uint64) error {
	if before <= l.StartOffset() {
		return nil
	}
	if end := l.DurableOffset(); before > end {
		return fmt.Errorf("%w: TruncateFront(%d) is past the durable end %d", ErrOutOfRange, before, end)
	}
	if err := writeMeta(l.dir, startName, metaStart, layout.EncodeStart(before), true); err != nil {
		return err
	}
	l.start.Store(before)
	return l.dropBelowLocked(before)
}

// dropBelowLocked deletes the sealed segments whose records all lie below
// off (never the active segment).
func (l *Log) dropBelowLocked(off uint64) error {
	segs := *l.segs.Load()
	n := 0
	for n < len(segs)-1 && segs[n].vis().off <= off {
		n++
	}
	return l.dropLocked(segs[:n], segs[n:])
}

// dropLocked removes the files of gone (oldest first, or newest first for
// a tail) and publishes keep as the segment list. Each file is removed and
// the directory synced before the next, so a crash leaves a contiguous log.
func (l *Log) dropLocked(gone, keep []*segment) error {
	if len(gone) == 0 {
		return nil
	}
	l.publishLocked(slices.Clone(keep), gone...)
	l.ra.reset() // chunks of the records dropped can never be read again
	for _, s := range gone {
		if err := l.dir.Remove(s.name); err != nil && !isNotExist(err) {
			return err
		}
		l.truncStep("removed " + s.name)
		if err := l.dir.Sync(); err != nil {
			return err
		}
	}
	return nil
}

// applyRetentionLocked drops the oldest sealed segments while the log holds
// more than RetentionBytes, or while they are older than RetentionAge.
func (l *Log) applyRetentionLocked() error {
	if l.opts.RetentionBytes <= 0 && l.opts.RetentionAge <= 0 {
		return nil
	}
	segs := *l.segs.Load()
	var total int64
	sizes := make([]int64, len(segs))
	for i, s := range segs {
		sizes[i] = s.storedBytes()
		total += sizes[i]
	}
	cut := uint64(0)
	now := l.opts.Now()
	for i, s := range segs[:len(segs)-1] {
		tooBig := l.opts.RetentionBytes > 0 && total > l.opts.RetentionBytes
		tooOld := l.opts.RetentionAge > 0 && now.Sub(time.Unix(0, s.lastTime())) > l.opts.RetentionAge
		if !tooBig && !tooOld {
			break
		}
		total -= sizes[i]
		cut = s.vis().off
	}
	if cut == 0 {
		return nil
	}
	return l.truncateFrontLocked(cut)
}

// TruncateBack drops the records at from and after, durably: when it
// returns, they are gone and stay gone after a crash, and the next append
// gets offset from.
//
// Segments after the one holding from are removed, newest first, each with
// a directory fsync. The segment holding from is rewritten copy-on-write:
// its records below from (the same batches, the same times) go to
// NAME.tmp, which is fdatasynced and renamed over NAME; the rename's
// directory fsync is the commit point. A crash before it leaves the old
// file (the log is then a prefix of what it was) and a .tmp that open
// removes. Nothing is modified in place, so readers that hold the old file
// keep reading it safely; iterators move to the new one at their next frame.
func (l *Log) TruncateBack(from uint64) error {
	defer l.lockChange()()
	if err := l.writableLocked(); err != nil {
		return err
	}
	if err := l.active.w.Sync(); err != nil {
		return err
	}
	end := l.active.w.NextOffset()
	switch {
	case from == end:
		return nil
	case from > end || from < l.StartOffset():
		return fmt.Errorf("%w: TruncateBack(%d) outside [%d, %d]", ErrOutOfRange, from, l.StartOffset(), end)
	}
	// From here a failure leaves the log halfway: fail() makes that sticky.
	if err := l.truncateBackLocked(from); err != nil {
		return l.fail(fmt.Sprintf("TruncateBack(%d)", from), err)
	}
	l.notifyDurable() // wakes WaitActive callers on the cut segment
	l.truncStep("published")
	return nil
}

func (l *Log) truncateBackLocked(from uint64) error {
	l.fresh.release() // offsets from on can be appended again
	l.ra.reset()
	if err := l.active.w.Close(); err != nil {
		return err
	}
	l.addSealedStats(l.active.w.Stats())
	l.active.w, l.active = nil, nil

	segs := *l.segs.Load()
	k := len(segs) - 1 // the segment holding from
	for segs[k].base > from {
		k--
	}
	l.hideFromReaders(segs[k].base)
	l.truncStep("hidden")
	if segs[k].base == from {
		// At a segment boundary: drop k and after, start a new segment.
		if err := l.dropLocked(reverse(segs[k:]), segs[:k]); err != nil {
			return err
		}
		if err := l.startActiveLocked(from); err != nil {
			return err
		}
		l.truncStep("started")
		return nil
	}
	// Held until the rewritten file replaces it, so the open-file bound
	// never closes it and a reader never opens the new file under its name.
	if !segs[k].acquire() {
		return ErrClosed
	}
	defer segs[k].done()
	if err := l.dropLocked(reverse(segs[k+1:]), segs[:k+1]); err != nil {
		return err
	}
	tmp, err := l.writePrefix(segs[k], from)
	if err != nil {
		return err
	}
	l.truncStep("prefix")
	if err := l.dir.Rename(tmp, segs[k].name); err != nil {
		return err
	}
	l.truncStep("renamed")
	if err := l.dir.Sync(); err != nil {
		return err
	}
	l.truncStep("synced")
	if err := l.reopenActiveLocked(segs[k]); err != nil {
		return err
	}
	l.truncStep("reopened")
	return nil
}

func reverse(s []*segment) []*segment { r := slices.Clone(s); slices.Reverse(r); return r }

// writePrefix copies the records of s below from into a new file NAME.tmp,
// in the same batches with the same timestamps and in s's format version
// (a batch that filled a writer of an older version, with its shorter
// record headers, would not fit one of the current version), and makes it
// durable. It returns the temporary name.
func (l *Log) writePrefix(s *segment, from uint64) (string, error) {
	if err := l.ensure(s); err != nil {
		return "", err
	}
	tmp := s.name + tmpSuffix
	if err := l.dir.Remove(tmp); err != nil && !isNotExist(err) {
		return "", err
	}
	dev, err := l.dir.Open(tmp, blockdev.Options{Create: true})
	if err != nil {
		return "", err
	}
	defer dev.Close()
	var frameTime int64 // the writer's clock: each copied frame keeps its time
	w, err := wal.Create(dev, s.base, wal.Options{SyncMode: wal.SyncNever, MaxWrite: int(s.hdr.MaxWrite), Version: s.hdr.Version,
		Now: func() time.Time { return time.Unix(0, frameTime) }})
	if err != nil {
		return "", err
	}
	defer w.Close()
	pos, off, vis := int64(wal.DataStart), s.base, s.vis()
	var buf []byte
	for off < from {
		raw, aligned, err := s.readRange(pos, min(pos+max(readAhead, int64(s.hdr.MaxWrite)), vis.pos), buf)
		if err != nil {
			return "", err
		}
		buf = aligned
		var appendErr error
		end, next, err := wal.DecodeFrames(raw, s.hdr, pos, off, func(f wal.Frame) bool {
			keep := int(min(uint64(f.Count), from-f.First))
			recs := make([][]byte, 0, keep)
			wal.Records(s.hdr.Version, f.Payload, func(i int, r []byte) bool { recs = append(recs, r); return i+1 < keep })
			frameTime = f.Time
			_, appendErr = w.Append(recs...)
			return appendErr == nil && f.First+uint64(f.Count) < from
		})
		if err == nil && end == pos {
			err = errors.New("no whole frame before the durable end")
		}
		if err != nil {
			return "", s.corrupt("truncate", end, err)
		}
		if appendErr != nil {
			return "", appendErr
		}
		pos, off = end, next
	}
	if err := w.Close(); err != nil { // writes and syncs everything
		return "", err
	}
	return tmp, nil
}

// hideFromReaders publishes, before TruncateBack removes or replaces the
// files from base on, that nothing of the segment at base is durable: until
// TruncateBack publishes the rewritten end, read-only logs in other
// processes show none of it beyond what they showed. The words it replaces
// describe the file being replaced: a reader that opened the rewrite (or a
// new file under a dropped one's name) and then read them would look for
// records up to the old end, past what the rewrite kept, and report the
// writer's change as damage.
func (l *Log) hideFromReaders(base uint64) {
	l.durMu.Lock()
	defer l.durMu.Unlock()
	if l.pub != nil {
		l.pub.publish(base, position{pos: wal.DataStart, off: base})
	}
}

// reopenActiveLocked opens the rewritten file of old as the active
// segment: a fresh wal writer (recovery rebuilds its index) and a fresh
// cache namespace, so no cached bytes of the old contents are served.
func (l *Log) reopenActiveLocked(old *segment) error {
	s, err := l.openSegment(old.base, true, 0, false)
	if err != nil {
		return err
	}
	l.replaceLastLocked(s)
	l.active = s
	return nil
}

// startActiveLocked starts a new, empty active segment at base.
func (l *Log) startActiveLocked(base uint64) error {
	s, err := l.createSegment(base, true)
	if err != nil {
		return err
	}
	l.pushLocked(s)
	return nil
}

// lockChange takes the two locks a change of the log's files and segment
// list holds, in their order (changeMu, then mu), and returns what lets go
// of both: defer l.lockChange()().
func (l *Log) lockChange() (unlock func()) {
	l.changeMu.Lock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		l.changeMu.Unlock()
	}
}

// dropCleanRecord rewrites the manifest without the clean close record
// the log was opened from (fdatasync, rename, directory fsync), before
// the first change writes anything: the commit point that keeps the record
// true, since an open trusts it only while nothing was written after it.
// Every change checks writableLocked first. If the rewrite fails, the
// change is refused with nothing written.
func (l *Log) dropCleanRecord() error {
	l.manifestMu.Lock()
	defer l.manifestMu.Unlock()
	if !l.cleanPending.Load() {
		return nil
	}
	if err := l.putManifestLocked(l.manifest(), true); err != nil {
		return fmt.Errorf("engine: removing the clean close record from %s before the first change failed (nothing was written; try again, or reopen the log): %w",
			filepath.Join(l.dir.Path(), manifestName), err)
	}
	l.cleanPending.Store(false)
	return nil
}

// truncStep runs truncHook at a step of a TruncateBack (nil outside tests).
func (l *Log) truncStep(step string) {
	if l.truncHook != nil {
		l.truncHook(step)
	}
}
