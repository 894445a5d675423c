package engine

import (
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// loadStart reads START, the first retained offset, and (unless read-only)
// removes the segments wholly below it that a crash left behind.
func (l *Log) loadStart() error {
	b, err := readMeta(l.dir, startName, metaStart)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(b) != 8 {
		return &CorruptionError{File: startName, Op: "open", Err: fmt.Errorf("START holds %d bytes, want 8", len(b))}
	}
	l.start.Store(binary.LittleEndian.Uint64(b))
	if l.opts.ReadOnly {
		return nil
	}
	return l.dropBelowLocked(l.start.Load())
}

// TruncateFront drops the records below before: reads of them fail with
// ErrOutOfRange from now on, and segment files wholly below before are
// deleted (once no reader uses them). The new start is durable when
// TruncateFront returns (START file: write, fdatasync, rename, directory
// fsync; the rename's directory fsync is the commit point).
func (l *Log) TruncateFront(before uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
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
	b := binary.LittleEndian.AppendUint64(nil, before)
	if err := writeMeta(l.dir, startName, metaStart, b); err != nil {
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
	keep = slices.Clone(keep)
	l.segs.Store(&keep)
	for _, s := range gone {
		s.visible.Store(&position{pos: wal.DataStart, off: s.base}) // iterators holding it stop
		if err := l.dir.Remove(s.name); err != nil && !isNotExist(err) {
			return err
		}
		if err := l.dir.Sync(); err != nil {
			return err
		}
		s.release()
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
		sizes[i], _ = s.dev.Size()
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
// gets offset from. Iterators positioned past from stop.
//
// Cutting inside a batch rewrites that batch's frame with the records
// before from. To survive a crash during the rewrite, the new frame is
// first saved in TRUNC (write, fdatasync, rename, directory fsync: the
// commit point); then later segments are removed, the frame rewritten and
// the rest of the file zeroed and synced, and TRUNC removed. Open replays
// a TRUNC it finds.
func (l *Log) TruncateBack(from uint64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
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
	// The active writer stops; the segment holding from becomes active.
	// From here a failure leaves the log halfway: fail() makes that sticky.
	if err := l.truncateBackLocked(from); err != nil {
		return l.fail(fmt.Sprintf("TruncateBack(%d)", from), err)
	}
	return nil
}

func (l *Log) truncateBackLocked(from uint64) error {
	if err := l.active.w.Close(); err != nil {
		return err
	}
	l.addSealedStats(l.active.w.Stats())
	l.active.w = nil
	l.active = nil

	segs := *l.segs.Load()
	k := len(segs) - 1 // the segment holding from
	for segs[k].base > from {
		k--
	}
	if segs[k].base == from {
		// Cut at a segment boundary: drop k and after, start a new segment.
		if err := l.dropLocked(reverse(segs[k:]), segs[:k]); err != nil {
			return err
		}
		return l.startActiveLocked(from)
	}
	plan, err := l.planCut(segs[k], from)
	if err != nil {
		return err
	}
	if err := writeMeta(l.dir, truncName, metaTrunc, plan.encode()); err != nil {
		return err
	}
	if err := l.dropLocked(reverse(segs[k+1:]), segs[:k+1]); err != nil {
		return err
	}
	if err := l.applyCut(segs[k], plan); err != nil {
		return err
	}
	return l.reopenActiveLocked(segs[k])
}

func reverse(s []*segment) []*segment { r := slices.Clone(s); slices.Reverse(r); return r }

// cutPlan is the redo record of a TruncateBack inside a segment.
type cutPlan struct {
	base  uint64 // segment
	pos   int64  // position of the frame holding from
	end   int64  // where the segment's bytes end (zero up to here)
	frame []byte // the frame rewritten with the records before from, or nil
}

func (p cutPlan) encode() []byte {
	b := binary.LittleEndian.AppendUint64(nil, p.base)
	b = binary.LittleEndian.AppendUint64(b, uint64(p.pos))
	b = binary.LittleEndian.AppendUint64(b, uint64(p.end))
	return append(b, p.frame...)
}

func decodeCutPlan(b []byte) (cutPlan, error) {
	if len(b) < 24 {
		return cutPlan{}, fmt.Errorf("TRUNC holds %d bytes", len(b))
	}
	return cutPlan{base: binary.LittleEndian.Uint64(b), pos: int64(binary.LittleEndian.Uint64(b[8:])),
		end: int64(binary.LittleEndian.Uint64(b[16:])), frame: b[24:]}, nil
}

// planCut finds the frame of s holding from and builds its replacement.
func (l *Log) planCut(s *segment, from uint64) (cutPlan, error) {
	size, err := s.dev.Size()
	if err != nil {
		return cutPlan{}, err
	}
	// Zero everything after the cut: a sealed file to its end (the footer
	// goes too); an active one to its durable end (its writer is closed, and
	// past that the file is zeros).
	vis := s.vis()
	s.mu.RLock()
	sealed := s.sealed
	s.mu.RUnlock()
	plan := cutPlan{base: s.base, end: size}
	if !sealed {
		plan.end = min(size, alignedbuf.AlignUp(vis.pos, int64(s.dev.Alignment().Block)))
	}
	start, chunkEnd, _ := s.chunk(from, vis)
	raw, _, err := s.readRange(start.pos, chunkEnd, nil)
	if err != nil {
		return cutPlan{}, err
	}
	found := false
	_, _, err = wal.DecodeFrames(raw, s.hdr, start.pos, start.off, func(f wal.Frame) bool {
		if from >= f.First+uint64(f.Count) {
			return true
		}
		plan.pos, found = f.Pos, true
		if keep := int(from - f.First); keep > 0 {
			var recs [][]byte
			wal.Records(f.Payload, func(i int, r []byte) bool { recs = append(recs, r); return i+1 < keep })
			plan.frame = make([]byte, wal.FrameSize(wal.PayloadSize(recs)))
			wal.EncodeFrame(plan.frame, s.hdr.SegmentID, f.Pos, f.First, f.Time, recs)
		}
		return false
	})
	if err == nil && !found {
		err = fmt.Errorf("offset %d not found in its index interval", from)
	}
	if err != nil {
		return cutPlan{}, &CorruptionError{Segment: s.base, File: s.name, Position: start.pos, Op: "truncate", Err: err}
	}
	return plan, nil
}

// applyCut rewrites the frame (if any) and zeroes the rest of the segment,
// then removes TRUNC. It is idempotent, for replay on open.
func (l *Log) applyCut(s *segment, p cutPlan) error {
	cutAt := p.pos
	if len(p.frame) > 0 {
		a := s.dev.Alignment()
		first := alignedbuf.AlignDown(p.pos, int64(a.Offset))
		last := alignedbuf.AlignUp(p.pos+int64(len(p.frame)), int64(a.Offset))
		buf := a.Alloc(int(last - first))
		if _, err := s.dev.ReadAt(buf[:a.Offset], first); err != nil {
			return fmt.Errorf("engine: truncate segment %s: %w", s.name, err)
		}
		clear(buf[p.pos-first:])
		copy(buf[p.pos-first:], p.frame)
		if _, err := s.dev.WriteAt(buf, first); err != nil {
			return fmt.Errorf("engine: truncate segment %s: %w", s.name, err)
		}
		cutAt += int64(len(p.frame))
	}
	if err := wal.Cut(s.dev, cutAt, p.end); err != nil {
		return fmt.Errorf("engine: truncate segment %s: %w", s.name, err)
	}
	if err := l.dir.Remove(truncName); err != nil && !isNotExist(err) {
		return err
	}
	return l.dir.Sync()
}

// redoTruncate replays a TruncateBack that a crash interrupted.
func (l *Log) redoTruncate() error {
	b, err := readMeta(l.dir, truncName, metaTrunc)
	if isNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if l.opts.ReadOnly {
		return fmt.Errorf("engine: a truncation was interrupted (TRUNC exists): open the log read-write once to finish it")
	}
	p, err := decodeCutPlan(b)
	if err != nil {
		return &CorruptionError{File: truncName, Op: "open", Err: err}
	}
	names, err := l.dir.List()
	if err != nil {
		return err
	}
	for _, n := range slices.Backward(names) { // newest first
		if base, ok := parseSegName(n); ok && base > p.base {
			if err := l.dir.Remove(n); err != nil {
				return err
			}
			if err := l.dir.Sync(); err != nil {
				return err
			}
		}
	}
	dev, err := l.dir.Open(segName(p.base), blockdev.Options{})
	if err != nil {
		return err
	}
	s := newSegment(p.base, segName(p.base), dev, 0, l.opts.IndexInterval)
	defer s.release()
	return l.applyCut(s, p)
}

// reopenActiveLocked makes s, just cut, the active segment again: a fresh
// wal writer (recovery rebuilds its index) and a fresh cache namespace, so
// no cached bytes of the old contents are served.
func (l *Log) reopenActiveLocked(old *segment) error {
	segs := *l.segs.Load()
	s, err := l.openSegment(old.base, true, 0)
	if err != nil {
		return err
	}
	segs = append(slices.Clone(segs[:len(segs)-1]), s)
	l.segs.Store(&segs)
	old.release()
	l.active = s
	return nil
}

// startActiveLocked starts a new, empty active segment at base.
func (l *Log) startActiveLocked(base uint64) error {
	s, err := l.createSegment(base)
	if err != nil {
		return err
	}
	segs := append(slices.Clone(*l.segs.Load()), s)
	l.segs.Store(&segs)
	l.active = s
	return nil
}

func (l *Log) writableLocked() error {
	switch {
	case l.closed:
		return ErrClosed
	case l.failed != nil:
		return l.failed
	case l.active == nil:
		return ErrReadOnly
	}
	return nil
}
