package engine

import (
	"sort"
	"time"

	"github.com/segstore/segstore/wal"
)

// SeekTime returns the first offset whose record was appended at or after
// t, or DurableOffset() if there is none yet. It uses the sparse index
// (each entry carries its frame's time) to find the index interval, then
// reads frames from there. Times are as the Options.Now clock gave them;
// within a segment they never go back.
func (l *Log) SeekTime(t time.Time) (uint64, error) {
	if l.closed() {
		return 0, ErrClosed
	}
	ts := t.UnixNano()
	segs := *l.segs.Load()
	// The last segment whose first index entry is before t holds the
	// answer, or its successor does.
	i := sort.Search(len(segs), func(i int) bool {
		first, ok := segs[i].firstEntry()
		return !ok || first.time >= ts
	}) - 1
	from := l.StartOffset()
	if i >= 0 && segs[i].acquire() {
		err := l.ensure(segs[i])
		var e indexEntry
		if err == nil {
			e, err = l.entryBefore(segs[i], ts)
		}
		if err == nil {
			_, first := e.frameOf()
			from = max(from, first)
		}
		segs[i].done()
		if err != nil {
			return 0, err
		}
	}
	it := l.NewIterator(from)
	defer it.Close()
	for it.Next() {
		if it.time >= ts {
			return it.Offset(), nil
		}
	}
	if it.Err() != nil {
		return 0, it.Err()
	}
	return l.DurableOffset(), nil
}

func (s *segment) firstEntry() (indexEntry, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.sum.Load() != nil: // the first record's entry, as far as SeekTime and info look
		if sum := s.sum.Load(); len(sum.First) > 0 {
			return indexEntry{off: s.base, pos: wal.DataStart + wal.FrameHeaderLen, time: sum.First[0].Time, back: wal.FrameHeaderLen}, true
		}
		return indexEntry{}, false
	case len(s.index) > 0:
		return s.index[0], true
	case s.sealed && s.man.next != 0: // not loaded (or unloaded): as described
		return indexEntry{off: s.base, pos: wal.DataStart, time: s.man.firstTime}, true
	}
	return indexEntry{}, false
}
