package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// Refresh brings a read-only log up to date with its directory's writer,
// typically another process: the records appended since the last look, the
// segments sealed and created, and the start moved by TruncateFront or
// retention. It reports whether anything changed, and wakes Wait. While
// a writer holds the log's lock, no record is shown before the writer has
// acknowledged it (it publishes how far in its DURABLE file). After a
// TruncateBack by the writer it returns an error wrapping ErrRewritten:
// reopen the log. It needs a directory that tells its files apart and
// opens them through the page cache (see Options.Dir).
func (l *Log) Refresh() (changed bool, err error) {
	if !l.opts.ReadOnly {
		return false, errors.New("engine: Refresh is for read-only logs (a writer's log is always current)")
	}
	if !l.caps.follows() {
		return false, errors.New("engine: Refresh needs a directory that tells its files apart and opens them through the page cache (a blockdev.Stater and blockdev.PlainOpener, as a real directory is)")
	}
	l.followed.mu.Lock()
	defer l.followed.mu.Unlock()
	if l.closed() {
		return false, ErrClosed
	}
	defer func() {
		if changed {
			l.notifyDurable()
		}
	}()
	// A look that finds the writer rolled past the last known segment
	// before its words say so stops there, and so does one whose listing
	// missed a segment file the writer was renaming into the directory
	// (readdir may miss entries added while it runs): the words move soon
	// after (the writer publishes the new segment once it is created),
	// and the next listing has the file, so look again a few times.
	for range refreshTries {
		grew, held, err := l.look()
		changed = changed || grew
		if err != nil || !held {
			return changed, err
		}
	}
	return changed, nil
}

// refreshTries bounds how many looks one Refresh takes while each stops
// at a segment the writer rolled past without saying so yet.
const refreshTries = 4

// look is one pass of Refresh. held reports that it stopped before files
// that follow an unsealed segment the writer may have rolled past.
func (l *Log) look() (changed, held bool, err error) {
	if !l.lookAtWriter() {
		return false, false, nil // nothing known of what the writer has acknowledged: show nothing new
	}
	l.hook("words", nil)
	names, err := l.dir.List()
	if err != nil {
		return false, false, err
	}
	bases := segmentBases(names)
	l.hook("listed", &bases)
	start := l.start.Load()
	if err := l.refreshStart(); err != nil {
		return false, false, err
	}
	changed = l.start.Load() != start

	old := *l.segs.Load()
	segs, err := l.refreshKnown(old, bases)
	if err != nil {
		return changed, false, err
	}
	l.hook("known", nil)
	if len(segs) != len(old) {
		changed = true
	}
	for i, s := range segs {
		// The last segment, and any the writer rolled past before its
		// seal was seen (its footer comes after the next file).
		if s.isSealed() || (i < len(segs)-1 && !s.retired.Load()) {
			continue
		}
		grew, err := l.follow(s, bases[len(bases)-1] > s.base)
		if err != nil {
			return changed, false, err
		}
		changed = changed || grew
	}
	segs = slices.Clip(segs) // refreshNew's appends copy it: readers may hold it
	added, held, err := l.refreshNew(&segs, bases)
	if added {
		changed = true
		l.publishLocked(segs)
	}
	if n := len(old); n > 0 { // the last known segment may be sealed now, and new ones were opened
		l.noteOpen(segs[sort.Search(len(segs), func(i int) bool { return segs[i].base >= old[n-1].base }):]...)
	} else {
		l.noteOpen(segs...)
	}
	return changed, held, err
}

// hook runs the test hook at a step of a look (nil outside tests); after
// the listing it gets the segment files listed.
func (l *Log) hook(step string, bases *[]uint64) {
	if l.refreshHook != nil {
		l.refreshHook(step, bases)
	}
}

// KeepRefreshed refreshes a read-only log until ctx is done: whenever a
// file in its directory changes (inotify: a write, a file created, renamed
// or removed, or a read of DURABLE, which the writer makes each time it
// acknowledges appends), and at least every interval, for file systems
// that send no such events (without inotify, as everywhere but Linux, it
// only polls).
// Readers waiting in Wait wake as records are found. It returns ctx's
// error, or Refresh's (ErrRewritten: reopen the log); an interval of zero
// or less is refused.
func (l *Log) KeepRefreshed(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("engine: KeepRefreshed needs a positive polling interval, not %v (it also looks at least that often where file events do not come)", interval)
	}
	var changes <-chan struct{}
	stop, err := func() {}, error(blockdev.ErrNoWatch)
	if l.caps.watch != nil {
		changes, stop, err = l.caps.watch.Watch(durableName)
	}
	switch {
	case errors.Is(err, blockdev.ErrNoWatch): // expected where there is no inotify
		l.opts.Logger.Debug("segstore: polling the log's directory", "dir", l.Dir(), "every", interval)
	case err != nil:
		l.opts.Logger.Warn("segstore: cannot watch the log's directory and its "+durableName+" file (inotify); polling instead", "dir", l.Dir(), "every", interval, "err", err)
	default:
		defer stop()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if _, err := l.Refresh(); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changes: // nil without inotify: never ready
		case <-t.C:
		}
	}
}

// WriterInfo is what a log knows of its directory's writer.
type WriterInfo struct {
	// Live: a process holds the writer's lock (for a log opened for
	// writing, this one).
	Live bool `json:"live"`
	// Acknowledged: appends below this offset are acknowledged, as the
	// writer published it in its DURABLE file (Published).
	Acknowledged uint64 `json:"acknowledged"`
	Published    bool   `json:"published"`
}

// Writer reports on the log's writer: itself for a log opened for
// writing (nothing once it is closed: it holds the lock no more); for a
// read-only one, whether another process holds the lock
// and how far it has acknowledged appends.
func (l *Log) Writer() WriterInfo {
	if !l.opts.ReadOnly {
		l.durMu.Lock() // Close clears pub under it
		w := WriterInfo{Live: true, Acknowledged: l.DurableOffset(), Published: l.pub != nil}
		l.durMu.Unlock()
		if l.closed() { // set before Close lets go of anything: w was read before it began
			return WriterInfo{}
		}
		return w
	}
	if l.caps.lock == nil {
		return WriterInfo{}
	}
	w := WriterInfo{Live: writerLive(l.caps)}
	l.followed.mu.Lock()
	defer l.followed.mu.Unlock()
	d := l.currentDurable()
	if d == nil {
		return w
	}
	if st, ok := d.read(); ok && st.open && w.Live {
		w.Acknowledged, w.Published = st.end.off, true
	}
	return w
}

// refreshStart reads START again, through the page cache: the writer
// replaces it by a rename at each change, so an unchanged one is served
// from memory, not read from the device at every look.
func (l *Log) refreshStart() error {
	path := filepath.Join(l.dir.Path(), startName)
	f, err := l.caps.plain.OpenPlain(startName, os.O_RDONLY)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	raw, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return err
	}
	b, err := decodeMeta(raw, path, metaStart)
	if err != nil {
		return err
	}
	return l.setStart(b)
}

// refreshKnown drops the segments at the front whose files the writer
// deleted, and checks that the others are still the files this log has
// open. It stores and returns the list kept.
func (l *Log) refreshKnown(segs []*segment, bases []uint64) ([]*segment, error) {
	present := func(base uint64) bool { _, ok := slices.BinarySearch(bases, base); return ok }
	drop := 0
	for drop < len(segs) && !present(segs[drop].base) {
		drop++
	}
	if drop == len(segs) && drop > 0 && (len(bases) == 0 || bases[0] < segs[drop-1].vis().off) {
		return nil, fmt.Errorf("%w: segments %s to %s are gone and the files left do not follow them: reopen", ErrRewritten, segs[0].name, segs[drop-1].name)
	}
	for _, s := range segs[drop:] {
		if !present(s.base) {
			return nil, fmt.Errorf("%w: segment %s is gone while earlier ones remain: reopen", ErrRewritten, s.name)
		}
	}
	if n := len(segs); n > drop {
		if same, err := l.sameFile(segs[n-1]); err != nil || !same {
			return nil, errors.Join(err, fmt.Errorf("%w: segment %s was replaced: reopen", ErrRewritten, segs[n-1].name))
		}
	}
	if drop == 0 {
		return segs, nil
	}
	keep := slices.Clone(segs[drop:])
	l.publishLocked(keep, segs[:drop]...)
	return keep, nil
}

// sameFile reports whether s's open file is still the one its name is.
func (l *Log) sameFile(s *segment) (bool, error) {
	if !s.acquire() {
		return false, nil
	}
	defer s.done()
	if !s.loaded.Load() {
		return true, nil // sealed, not opened yet (or closed by the open-file bound)
	}
	if l.caps.stat == nil {
		return true, nil // nothing tells files apart: the one listed
	}
	named, err := l.caps.stat.Stat(s.name)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	open, err := l.caps.stat.StatDevice(s.dev)
	if err != nil {
		return false, err
	}
	return named.SameFile(open), nil
}

// quietFor: a look skips reading the active segment when its modification
// time is the one the previous look saw and that look started at least
// this long after it, so every write stamped then had completed. (Used
// when no live writer publishes its durable end.)
const quietFor = 2 * time.Second

// follow reads the frames the writer appended to s since the last look,
// as far as the writer has acknowledged them (its DURABLE file), and seals
// s when its footer appears (or, with no live writer bounding s, when a
// later file exists). Nothing is read when nothing more is durable, or,
// without a live writer's word, when the file was not written since a
// look that started well after its last write.
//
// The writer's words are read again here, after s's file was opened (and
// after the directory was listed): words read before the file was opened
// may describe a file the writer has replaced since (TruncateBack) and
// appended to without syncing, or an end the writer has since sealed
// past. Words read after the open bound what this file holds: the writer
// never changes a byte below a published end in place, and a file that
// replaces this one after the open leaves this one as it was, all of it
// made durable before the replacement (the next look finds it replaced).
func (l *Log) follow(s *segment, rolled bool) (grew bool, err error) {
	v := s.vis()
	l.lookAtWriter()
	limit, bounded := l.ackLimit(s) // what is acknowledged now
	if bounded && !rolled && v.pos >= limit.pos {
		return false, nil
	}
	var mod time.Time // zero where the directory keeps no time: always read
	if l.caps.stat != nil {
		if st, err := l.caps.stat.StatDevice(s.dev); err == nil {
			mod = st.ModTime
		}
	}
	if !bounded && !rolled && !mod.IsZero() && mod.Equal(s.looked.mod) && s.looked.at.Sub(mod) >= quietFor {
		return false, nil
	}
	s.looked.mod, s.looked.at = mod, time.Now()
	sc, err := wal.Continue(s.dev, s.hdr, v.pos, v.off)
	if err != nil {
		return false, err
	}
	if !bounded && (!l.followed.live || rolled) {
		// No writer has the log open, or the live one has rolled past s
		// (it publishes the next segment once s's footer is durable, and
		// changes s in place no more): nothing past the frames is in
		// flight, so where no valid frame is, the scan judges as an open's
		// does. A torn tail shows nothing more (the next writer cuts it);
		// damage is corruption. Stopping there without a verdict, a reader
		// showed the records before damage the writer had acknowledged and
		// nothing more, without a word, or, once the writer had rolled
		// past, took the gap to the next segment for a rewrite.
		if err := sc.Settle(); err != nil {
			return false, err
		}
	}
	end := v
	ahead := false // the scan reached a frame past the acknowledged end
	for sc.Next() {
		f := sc.Frame()
		if bounded && f.End() > limit.pos {
			ahead = true
			break // written, not acknowledged yet
		}
		s.indexFrame(f)
		end = position{pos: f.End(), off: f.First + uint64(f.Count)}
	}
	// A frame that fails to decode at or past the acknowledged end is an
	// append in flight, not damage: a write that extends a file not
	// preallocated (the rewrite TruncateBack leaves) can show its first
	// block before the file's size covers the frame. Nothing is appended
	// after a footer, so what the scan found after one is damage.
	if err := sc.Err(); err != nil && (!bounded || sc.End() < limit.pos || sc.Footer() != nil) {
		return false, s.corrupt("refresh", sc.End(), err)
	}
	// A footer is written after the records before it are durable.
	if f := sc.Footer(); f != nil && f.Pos == end.pos {
		if err := s.decodeFooter(f); err != nil {
			return false, s.corrupt("refresh", f.Pos, err)
		}
		return true, nil
	}
	if bounded && !ahead && end.pos < limit.pos {
		// The scan found no valid frame (a live scan gives no verdict)
		// below the end the live writer had acknowledged before the scan
		// began: every frame there was durable before the writer said so,
		// and it changes none in place. Unless the file was replaced since
		// (the next look finds that), the frame at end is damage to
		// acknowledged records: shown as nothing, a reader would stop
		// there without a word, and one waiting for them would wait for
		// ever.
		same, err := l.sameFile(s)
		if err != nil {
			return false, err
		}
		if same {
			return false, s.corrupt("refresh", end.pos, fmt.Errorf("no valid frame at byte %d, below byte %d, where the live writer has acknowledged the records before offset %d", end.pos, limit.pos, limit.off))
		}
	}
	if end.pos > v.pos {
		s.visible.Store(&end)
		grew = true
	}
	if rolled && !bounded && !s.retired.Load() {
		// A later file exists and no live writer bounds this one, so the
		// writer is done with it: it is retired. Its seal comes after the
		// next file's creation, and a crash can leave it unsealed (a
		// read-write open seals it); a later look still takes its footer
		// when it appears. The next segment must start at its end, which
		// refreshNew checks. Beside a live writer only the footer ends
		// s: a bound it published says where s was durable then, not
		// where s ends (it publishes the next segment once s is sealed).
		s.retired.Store(true)
		grew = true
	}
	return grew, nil
}

// refreshNew opens the segment files after the last known one, appending
// them to segs: sealed ones through their footer, the last one followed
// like the active segment. A file whose header is not written yet (being
// created), or that is gone since the listing, is left for the next look,
// and so are the files after a segment not sealed yet (held: the writer
// has rolled past it, but its words still bound it) or after one whose
// successor the listing missed (held too).
func (l *Log) refreshNew(segs *[]*segment, bases []uint64) (added, held bool, err error) {
	for i, base := range bases {
		n := len(*segs)
		if n > 0 && base <= (*segs)[n-1].base {
			continue
		}
		if n > 0 {
			prev := (*segs)[n-1]
			if !prev.isSealed() && !prev.retired.Load() {
				return added, true, nil
			}
			if end := prev.vis().off; end != base {
				if end < base && l.segmentExists(end) {
					// A listing made while the writer renames a new
					// segment into the directory may miss that file and
					// show a later one: list again.
					return added, true, nil
				}
				return added, false, fmt.Errorf("%w: segment %s ends at offset %d but the next file starts at %d: reopen",
					ErrRewritten, prev.name, end, base)
			}
		}
		var s *segment
		if i < len(bases)-1 {
			s, err = l.openSegment(base, false, bases[i+1], false)
		} else {
			s, err = l.openLive(base)
		}
		if err != nil || s == nil {
			if s != nil {
				s.release()
			}
			if isNotExist(err) {
				// Removed since the listing (the writer truncated back):
				// the next look lists the directory again and tells.
				return added, false, nil
			}
			if i < len(bases)-1 && !l.segmentExists(bases[i+1]) {
				// The next file listed is gone: the writer truncated back
				// and rewrote this one since the listing.
				return added, false, fmt.Errorf("%w: segment %s changed and %s is gone since the directory was listed: reopen (%w)", ErrRewritten, segName(base), segName(bases[i+1]), err)
			}
			return added, false, err
		}
		*segs = append(*segs, s)
		added = true
	}
	return added, false, nil
}

// rewrittenAfter reports whether the writer has rewritten the end of a
// read-only log since the log last looked, as seen from its segment s: a
// segment it shows after s is gone from the directory, or the name of its
// last one is another file now (it holds that file open, so the files
// themselves are compared). A TruncateBack into s or before it does
// either: it removes every segment after the one it cuts into, and
// replaces that one.
func (l *Log) rewrittenAfter(s *segment) bool {
	if l.caps.stat == nil {
		return false
	}
	segs := *l.segs.Load()
	i := sort.Search(len(segs), func(i int) bool { return segs[i].base > s.base })
	if i == len(segs) {
		return false
	}
	for _, t := range segs[i:] {
		if !l.segmentExists(t.base) {
			return true
		}
	}
	same, err := l.sameFile(segs[len(segs)-1])
	return err == nil && !same
}

// segmentExists reports whether the file of the segment at base is in
// the directory now.
func (l *Log) segmentExists(base uint64) bool {
	_, err := l.dir.Size(segName(base)) // a stat
	return err == nil
}

// openLive opens the writer's newest segment file read-only and reads what
// is written of it; nil if its header is not written yet.
func (l *Log) openLive(base uint64) (*segment, error) {
	dev, err := l.dir.Open(segName(base), blockdev.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	s := l.newSegment(base, dev)
	sc, err := wal.NewScanner(dev)
	if errors.Is(err, wal.ErrNotWAL) {
		// A header not written yet, unless the live writer has
		// acknowledged records in this file: then it was written, and is
		// damaged (taken for an unwritten one, the reader stayed behind
		// without a word, and a Wait for those records never returned).
		l.lookAtWriter()
		if limit, bounded := l.ackLimit(s); bounded && limit.off > base {
			return s, s.corrupt("refresh", 0, fmt.Errorf("the writer acknowledged records up to offset %d in this file, and it has no valid header: %w", limit.off, err))
		}
		s.release()
		return nil, nil
	}
	if err != nil {
		return s, s.corrupt("refresh", 0, err)
	}
	s.hdr = sc.Header()
	if err := l.checkHeader(s); err != nil {
		return s, err
	}
	s.visible.Store(&position{pos: wal.DataStart, off: base})
	if _, err := l.follow(s, false); err != nil {
		return s, err
	}
	return s, nil
}
