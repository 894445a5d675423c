package engine

import (
	"slices"
	"sync"
	"sync/atomic"
)

// openFiles bounds the sealed segments whose files are open and whose
// sparse index is in memory, so that memory and open files do not grow
// with the number of segments. Every loaded sealed segment
// is noted here; past Options.MaxOpenSegments, a clock sweep (an
// approximation of least recently used: each use sets the segment's used
// bit, the sweep clears it and passes over it once) unloads one that
// nobody uses: its file is closed and its index dropped, and its next use
// opens the file and reads the footer again (Log.ensure), checked against
// what it was. Not unloaded: the active segment (never noted), the
// newest segment of a read-only log, segments in use by a reader, an
// iterator positioned in them, a view or a mapping (so a segment is
// never closed under an export, and a reader never sees it change), and
// a read-only log's segment with a damaged footer (nothing to check its
// file against when it is opened again). Those may keep the count above
// the bound until they are let go; the next note trims it again.
type openFiles struct {
	mu   sync.Mutex
	segs []*segment // noted, loaded (or since released); guarded by mu
	hand int        // the clock's position in segs
	// unloads counts the files closed by the bound (for tests).
	unloads atomic.Int64
}

// noteOpen notes the loaded sealed segments among segs (others are
// ignored) and trims the open files to the bound.
func (l *Log) noteOpen(segs ...*segment) {
	f := &l.files
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range segs {
		if s == nil || s.inFiles || !s.loaded.Load() || !s.isSealed() {
			continue
		}
		s.inFiles = true
		s.used.Store(true)
		f.segs = append(f.segs, s)
	}
	l.trimFilesLocked()
}

// trimFilesLocked unloads unused segments, oldest used first, until at
// most MaxOpenSegments are open or every one left is held.
func (l *Log) trimFilesLocked() {
	f := &l.files
	var newest *segment
	if segs := *l.segs.Load(); len(segs) > 0 {
		newest = segs[len(segs)-1]
	}
	// Two passes at most: the first may only clear used bits.
	for steps := 2 * len(f.segs); len(f.segs) > l.opts.MaxOpenSegments && steps > 0; steps-- {
		if f.hand >= len(f.segs) {
			f.hand = 0
		}
		s := f.segs[f.hand]
		switch {
		case s.refs.Load() == 0 || !s.loaded.Load(): // released: closed already
		case s.used.Load():
			s.used.Store(false)
			f.hand++
			continue
		case s == newest || !s.reloadable() || !s.unload():
			f.hand++
			continue
		default:
			f.unloads.Add(1)
		}
		s.inFiles = false
		f.segs = slices.Delete(f.segs, f.hand, f.hand+1)
	}
}

// forgetFiles empties the set (Close: every file is released).
func (l *Log) forgetFiles() {
	f := &l.files
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.segs {
		s.inFiles = false
	}
	f.segs, f.hand = nil, 0
}
