package engine

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/segstore/segstore/internal/testutil"
	"github.com/stretchr/testify/require"
)

// The store the truncation sweeps cut: three segments of ten records each
// (two sealed, [0, 10) and [10, 20), and the active one, [20, 30)),
// appended in batches of two, so an odd offset is inside a batch.
const (
	sweepSegments = 3
	sweepPerSeg   = 10
	sweepBatch    = 2
	sweepEnd      = sweepSegments * sweepPerSeg
)

// sweepRec is the record at off in generation gen: generation 0 is the
// store before the truncation, generation 1 what the writer appends at the
// cut offsets after it. They differ in length, so the rewritten records'
// frames lie at other positions than the ones they replace.
func sweepRec(gen int, off uint64) []byte {
	n := 120
	if gen > 0 {
		n = 44
	}
	b := []byte(strings.Repeat(fmt.Sprint(gen), n))
	copy(b, fmt.Sprintf("gen %d offset %d|", gen, off))
	return b
}

// sweepOptions are the options of the sweep store's writer and readers:
// realOptions with a cache of 1 MiB, more than the store holds. Each case
// opens a writer and several readers, and under -race making and clearing
// the counters of the default 64 MiB cache cost more than the case's reads.
func sweepOptions() Options {
	o := realOptions()
	o.CacheBytes = 1 << 20
	return o
}

// sweepStore writes the store in a fresh directory and returns its path
// and writer (closed when the test ends).
func sweepStore(t *testing.T) (string, *Log) {
	t.Helper()
	path := t.TempDir()
	w, err := Open(path, sweepOptions())
	require.NoError(t, err)
	t.Cleanup(func() { w.Close() })
	for seg := range sweepSegments {
		if seg > 0 {
			require.NoError(t, w.Roll())
		}
		for range sweepPerSeg / sweepBatch {
			off := w.EndOffset()
			batch := make([][]byte, sweepBatch)
			for i := range batch {
				batch[i] = sweepRec(0, off+uint64(i))
			}
			_, err := w.Append(batch...)
			require.NoError(t, err)
		}
	}
	require.NoError(t, w.Sync())
	require.Len(t, w.Segments(), sweepSegments)
	return path, w
}

// appendNewGeneration appends generation 1 at the writer's end (the cut
// offsets and a few more), in batches of three, so its frames fall on
// other boundaries than generation 0's did.
func appendNewGeneration(t *testing.T, w *Log, from uint64) {
	t.Helper()
	for w.EndOffset() < max(from, sweepEnd)+4 {
		off := w.EndOffset()
		_, err := w.Append(sweepRec(1, off), sweepRec(1, off+1), sweepRec(1, off+2))
		require.NoError(t, err)
	}
	require.NoError(t, w.Sync())
}

// checkView checks every record r shows, by point reads and by an
// iterator from its start: below from, generation 0; at or past from,
// generation 0 if old allows it (the reader still shows the end before
// the truncation), generation 1 if now allows it (the writer has appended
// it). A reader showing a mix of both past from is wrong. A stale reader
// (one that has not looked at the directory since the writer changed it)
// may instead be told that the writer rewrote a segment it reads
// (ErrRewritten: reopen) or, at or past from, removed it (ErrOutOfRange,
// where its iterator ends as caught up); never anything else.
func checkView(t *testing.T, r *Log, from uint64, old, now, stale bool, what string) {
	t.Helper()
	start, end := r.StartOffset(), r.EndOffset()
	if !now {
		require.LessOrEqual(t, end, uint64(sweepEnd), "%s: the reader shows records the writer never appended", what)
	}
	told := func(off uint64, err error) bool {
		return stale && (errors.Is(err, ErrRewritten) || (off >= from && errors.Is(err, ErrOutOfRange)))
	}
	gen := -1 // the generation shown at or past from
	check := func(off uint64, got []byte, how string) {
		t.Helper()
		want := 0
		if off >= from {
			switch {
			case gen >= 0:
				want = gen
			case now && string(got) == string(sweepRec(1, off)):
				want = 1
			case !old:
				want = 1
			}
			gen = want
		}
		require.Equal(t, string(sweepRec(want, off)), string(got), "%s: %s of offset %d (the reader shows [%d, %d))", what, how, off, start, end)
	}
	for off := start; off < end; off++ {
		got, err := r.Read(off, nil)
		if told(off, err) {
			continue
		}
		require.NoError(t, err, "%s: read of offset %d, which the reader shows ([%d, %d))", what, off, start, end)
		check(off, got, "read")
	}
	gen = -1
	it := r.NewIterator(start)
	defer it.Close()
	next := start
	for it.Next() {
		require.Equal(t, next, it.Offset(), "%s: the iterator's offset", what)
		check(next, it.Record(), "iterator")
		next++
	}
	if told(next, it.Err()) || (stale && it.Err() == nil && next >= from) {
		return // a stale reader's iterator is caught up where the writer removed the file
	}
	require.NoError(t, it.Err(), "%s: the iterator from %d", what, start)
	require.Equal(t, end, next, "%s: the iterator ends where the reader's end is", what)
}

// refreshOrReopen refreshes r; if the writer rewrote the end (ErrRewritten,
// the only error a writer's own change may give) it reopens r with its
// options, as documented, and the new open must succeed. It returns the log to use.
// finishAndFollow lets the paused truncation p of w finish (w then
// appends other records at the cut offsets), follows it with r, a
// read-only log of path, and checks that r then shows exactly w's log,
// the records from from on the new ones. It returns r, or the log that
// replaced it.
func finishAndFollow(t *testing.T, p *pausedTruncation, w, r *Log, path string, from uint64) *Log {
	t.Helper()
	p.finish(t)
	for range 2 { // a replaced file is found at the next look
		r = refreshOrReopen(t, r, path, "after the truncation")
	}
	checkView(t, r, from, false, true, false, "after the truncation")
	requireOnlyAcknowledged(t, w, r, "after the truncation")
	require.Equal(t, w.EndOffset(), r.EndOffset(), "after the writer's appends the reader shows every record")
	return r
}

func refreshOrReopen(t *testing.T, r *Log, path, what string) *Log {
	t.Helper()
	_, err := r.Refresh()
	if err == nil {
		return r
	}
	require.ErrorIs(t, err, ErrRewritten, "%s: Refresh may fail only with ErrRewritten", what)
	opts := r.Options()
	r.Close()
	r, err = Open(path, opts)
	require.NoError(t, err, "%s: reopening after ErrRewritten", what)
	return r
}

// truncateRow is a TruncateBack of the sweep store: where it cuts, and the
// steps it takes (truncHook's names) that change files or DURABLE.
type truncateRow struct {
	name  string
	from  uint64
	steps []string
}

func removed(base uint64) string { return "removed " + segName(base) }

// truncateRows: at a segment boundary and inside a segment (its first,
// middle and last record, at and inside a batch), with several segments
// dropped and with only the active segment cut.
var truncateRows = []truncateRow{
	{"boundary/active", 20, []string{"hidden", removed(20), "started", "published"}},
	{"boundary/sealed", 10, []string{"hidden", removed(20), removed(10), "started", "published"}},
	{"sealed/first record kept", 11, []string{"hidden", removed(20), "prefix", "renamed", "synced", "reopened", "published"}},
	{"sealed/middle at a batch", 14, []string{"hidden", removed(20), "prefix", "renamed", "synced", "reopened", "published"}},
	{"sealed/middle inside a batch", 15, []string{"hidden", removed(20), "prefix", "renamed", "synced", "reopened", "published"}},
	{"sealed/last record cut", 19, []string{"hidden", removed(20), "prefix", "renamed", "synced", "reopened", "published"}},
	{"several segments dropped", 4, []string{"hidden", removed(20), removed(10), "prefix", "renamed", "synced", "reopened", "published"}},
	{"active/first record kept", 21, []string{"hidden", "prefix", "renamed", "synced", "reopened", "published"}},
	{"active/middle at a batch", 24, []string{"hidden", "prefix", "renamed", "synced", "reopened", "published"}},
	{"active/middle inside a batch", 25, []string{"hidden", "prefix", "renamed", "synced", "reopened", "published"}},
	{"active/last record cut", 29, []string{"hidden", "prefix", "renamed", "synced", "reopened", "published"}},
}

// sweepRows is truncateRows with SEGSTORE_LONG=1; in the default test run,
// the rows at picks (each sweep runs every step, or pair of steps, of
// each row it gets, with a real directory: the whole table took about two
// minutes of the engine's tests under -race).
func sweepRows(picks ...int) []truncateRow {
	if testutil.Long() {
		return truncateRows
	}
	rows := make([]truncateRow, len(picks))
	for i, p := range picks {
		rows[i] = truncateRows[p]
	}
	return rows
}

// TestReadOnlyLogsAtEveryStepOfTruncateBack sweeps TruncateBack beside
// read-only logs: for each row and each step of the truncation that
// changes files or DURABLE, at that step (the writer's locks held) a new
// read-only log is opened on the directory, Verify finds no problem, and
// logs opened before the truncation (read through; never read; read
// through, then its sealed files closed as the open-file bound does) are
// read and then
// refreshed. None may fail: a log not refreshed yet may be told that the
// writer rewrote (ErrRewritten) or, past the cut, removed (ErrOutOfRange)
// what it reads, a refresh may say ErrRewritten and the reopen must
// succeed. Every record each shows is the writer's at that offset: below
// the cut what it was, at or past it the old record or nothing. Once the
// truncation returns and the writer appends other records at the cut
// offsets, all of them, after a refresh, show exactly the writer's log,
// never an old record there.
func TestReadOnlyLogsAtEveryStepOfTruncateBack(t *testing.T) {
	ro := sweepOptions()
	ro.ReadOnly = true
	for _, row := range sweepRows(0, 1, 4, 6, 9) {
		for _, step := range row.steps {
			t.Run(row.name+"/"+step, func(t *testing.T) {
				path, w := sweepStore(t)
				old, err := Open(path, ro)
				require.NoError(t, err)
				defer func() { old.Close() }()
				checkView(t, old, row.from, true, false, false, "the reader before the truncation")
				require.Equal(t, uint64(sweepEnd), old.EndOffset())
				// Opened before too, but nothing read: its sealed segments
				// are trusted through the manifest, their files not opened.
				unread, err := Open(path, ro)
				require.NoError(t, err)
				defer func() { unread.Close() }()
				// Opened before and read through, then its sealed files
				// closed as the open-file bound closes them (unload): their
				// next reads open them by name again.
				closed, err := Open(path, ro)
				require.NoError(t, err)
				defer func() { closed.Close() }()
				checkView(t, closed, row.from, true, false, false, "the reader whose files are closed, before the truncation")
				for _, s := range *closed.segs.Load() {
					if s.isSealed() {
						for !s.unload() { // false while a reader lets go of it
							runtime.Gosched()
						}
						require.False(t, s.loaded.Load(), "segment %d's file is closed", s.base)
					}
				}

				var fresh *Log
				defer func() {
					if fresh != nil {
						fresh.Close()
					}
				}()
				var seen []string
				w.truncHook = func(at string) {
					seen = append(seen, at)
					if at != step {
						return
					}
					fresh, err = Open(path, ro)
					require.NoError(t, err, "a read-only open at %q", at)
					checkView(t, fresh, row.from, true, false, false, "opened at "+at)
					rep, err := Verify(path, VerifyOptions{})
					require.NoError(t, err, "Verify at %q", at)
					require.Empty(t, rep.Problems, "Verify at %q", at)
					checkView(t, unread, row.from, true, false, true, "not refreshed, at "+at)
					checkView(t, closed, row.from, true, false, true, "files closed, not refreshed, at "+at)
					for _, r := range []**Log{&old, &unread, &closed} {
						*r = refreshOrReopen(t, *r, path, "refreshed at "+at)
						checkView(t, *r, row.from, true, false, false, "refreshed at "+at)
					}
				}
				require.NoError(t, w.TruncateBack(row.from))
				w.truncHook = nil
				require.Equal(t, row.steps, seen, "the truncation's steps")
				require.NotNil(t, fresh, "a reader was opened at %q", step)

				appendNewGeneration(t, w, row.from)
				for _, reader := range []struct {
					name string
					r    **Log
				}{{"opened at " + step, &fresh}, {"opened before", &old}, {"opened before, not read", &unread}, {"opened before, files closed", &closed}} {
					name, r := reader.name, reader.r
					for range 2 { // a replaced file is found at the next look
						*r = refreshOrReopen(t, *r, path, name+", after the truncation")
					}
					checkView(t, *r, row.from, false, true, false, name+", after the truncation")
					requireOnlyAcknowledged(t, w, *r, name+", after the truncation")
					require.Equal(t, w.EndOffset(), (*r).EndOffset(), "%s: after the writer's appends the reader shows every record", name)
				}
			})
		}
	}
}

// pausedTruncation runs w.TruncateBack(from) and then appends generation
// 1 at the cut offsets, in a goroutine that waits before it starts and
// after each of the truncation's steps until advance lets it on;
// "appended" is the step after the appends.
type pausedTruncation struct {
	at       chan string   // the step the writer has reached
	on       chan struct{} // lets the writer take its next step
	done     chan error
	steps    []string // every step, "appended" last
	i        int      // steps reached so far
	finished bool     // done was received
}

func startPausedTruncation(w *Log, row truncateRow) *pausedTruncation {
	p := &pausedTruncation{at: make(chan string), on: make(chan struct{}, 1), done: make(chan error, 1), steps: append(slices.Clone(row.steps), "appended")}
	w.truncHook = func(step string) {
		p.at <- step
		<-p.on
	}
	go func() {
		<-p.on
		err := w.TruncateBack(row.from)
		w.truncHook = nil
		for err == nil && w.EndOffset() < max(row.from, sweepEnd)+4 {
			off := w.EndOffset()
			_, err = w.Append(sweepRec(1, off), sweepRec(1, off+1), sweepRec(1, off+2))
		}
		if err == nil {
			p.at <- "appended"
		}
		p.done <- err
	}()
	return p
}

// advance lets the writer run until it has taken step, and stops it there.
func (p *pausedTruncation) advance(t *testing.T, step string) {
	t.Helper()
	require.Contains(t, p.steps, step)
	for p.i == 0 || p.steps[p.i-1] != step {
		require.Less(t, p.i, len(p.steps), "the writer is past %q", step)
		p.on <- struct{}{}
		select {
		case got := <-p.at:
			require.Equal(t, p.steps[p.i], got, "the truncation's step %d", p.i)
		case err := <-p.done:
			p.finished = true
			require.NoError(t, err, "the writer, before %q", p.steps[p.i])
			require.Fail(t, "the writer ended before "+p.steps[p.i])
		}
		p.i++
	}
}

// finish lets the writer run to its end.
func (p *pausedTruncation) finish(t *testing.T) {
	t.Helper()
	p.advance(t, "appended")
	p.finished = true
	require.NoError(t, <-p.done)
}

// drain lets a writer that a failed test left paused run to its end.
func (p *pausedTruncation) drain() {
	for !p.finished {
		select {
		case <-p.at:
		case p.on <- struct{}{}:
		case <-p.done:
			p.finished = true
		}
	}
}

// TestReadOnlyOpenAcrossTruncateBack: a read-only open that lists the
// directory and opens the files at one step of a TruncateBack and reads
// the writer's DURABLE words at a later one (the writer moving on between
// the open's steps, its listing the same when nothing was removed: a
// rewrite is renamed over the old name). Every pair of steps, from before
// the truncation to after the writer appended other records at the cut
// offsets. The open must succeed and show the old records or the new
// ones, each read right; after a refresh (a reopen if it says
// ErrRewritten) exactly the writer's log.
func TestReadOnlyOpenAcrossTruncateBack(t *testing.T) {
	ro := sweepOptions()
	ro.ReadOnly = true
	for _, row := range sweepRows(1, 4, 9) {
		points := append([]string{"before"}, row.steps...)
		points = append(points, "appended")
		for i, files := range points {
			for _, words := range points[i:] {
				t.Run(fmt.Sprintf("%s/files at %s/words at %s", row.name, files, words), func(t *testing.T) {
					path, w := sweepStore(t)
					p := startPausedTruncation(w, row)
					defer p.drain()
					acted := map[string]bool{}
					readOnlyOpenHook = func(step string) {
						if acted[step] {
							return // a later attempt of the same open
						}
						acted[step] = true
						switch step {
						case "listed":
							if files != "before" {
								p.advance(t, files)
							}
						case "loaded":
							if words != "before" {
								p.advance(t, words)
							}
						}
					}
					r, err := Open(path, ro)
					readOnlyOpenHook = nil
					require.NoError(t, err, "a read-only open across the truncation")
					defer func() { r.Close() }()
					writerDone := words == "appended"
					checkView(t, r, row.from, true, writerDone, true, "opened across the truncation")

					r = finishAndFollow(t, p, w, r, path, row.from)
				})
			}
		}
	}
}

// TestRefreshAcrossTruncateBack: a Refresh of a read-only log opened
// before a TruncateBack (nothing read: its sealed segments trusted
// through the manifest) during which the truncation moves on: to one of
// its steps after the look read the writer's words or after it listed
// the directory, and to the same or a later one after it checked the
// segments it knows against the listing, before it follows the files
// (every pair of steps, up to after the writer appended other records at
// the cut offsets). The look may say only ErrRewritten (then the log is
// reopened); the log shows the old records or the new ones, each right,
// told at most ErrRewritten or, past the cut, ErrOutOfRange; after
// another refresh, exactly the writer's log.
func TestRefreshAcrossTruncateBack(t *testing.T) {
	ro := sweepOptions()
	ro.ReadOnly = true
	for _, row := range sweepRows(1, 4, 9) {
		points := append([]string{"before"}, row.steps...)
		points = append(points, "appended")
		for _, first := range []string{"words", "listed"} {
			for i, early := range points {
				for _, late := range points[i:] {
					t.Run(fmt.Sprintf("%s/%s at %s/known at %s", row.name, first, early, late), func(t *testing.T) {
						path, w := sweepStore(t)
						r, err := Open(path, ro)
						require.NoError(t, err)
						defer func() { r.Close() }()
						p := startPausedTruncation(w, row)
						defer p.drain()
						looks := 0
						r.refreshHook = func(step string, _ *[]uint64) {
							if step == "words" {
								looks++
							}
							if looks > 1 {
								return // a later look of the same Refresh
							}
							switch {
							case step == first && early != "before":
								p.advance(t, early)
							case step == "known" && late != "before":
								p.advance(t, late)
							}
						}
						_, err = r.Refresh()
						r.refreshHook = nil
						if err != nil {
							require.ErrorIs(t, err, ErrRewritten, "Refresh across the truncation may fail only with ErrRewritten")
							r.Close()
							r, err = Open(path, ro)
							require.NoError(t, err, "reopening after ErrRewritten")
						}
						checkView(t, r, row.from, true, late == "appended", true, "refreshed across the truncation")

						r = finishAndFollow(t, p, w, r, path, row.from)
					})
				}
			}
		}
	}
}

// TestVerifyAcrossTruncateBack: Verify beside a writer whose TruncateBack
// moves on, paused at each of its steps (and after the writer appended
// other records at the cut offsets), after Verify listed the directory or
// after it read the writer's words for the last segment: it must report
// no problem. Each row's truncation, at every step, once for each place.
func TestVerifyAcrossTruncateBack(t *testing.T) {
	for _, row := range sweepRows(0, 1, 4, 6, 9) {
		points := append(slices.Clone(row.steps), "appended")
		for _, at := range []string{"listed", "words"} {
			for _, step := range points {
				t.Run(fmt.Sprintf("%s/%s/%s", row.name, at, step), func(t *testing.T) {
					path, w := sweepStore(t)
					p := startPausedTruncation(w, row)
					defer p.drain()
					acted := false
					verifyHook = func(s string) {
						if s == at && !acted {
							acted = true
							p.advance(t, step)
						}
					}
					rep, err := Verify(path, VerifyOptions{})
					verifyHook = nil
					require.NoError(t, err)
					require.True(t, acted, "the writer moved on during the check")
					require.Empty(t, rep.Problems, "Verify across the truncation")
					p.finish(t)
					rep, err = Verify(path, VerifyOptions{})
					require.NoError(t, err)
					require.Empty(t, rep.Problems, "Verify after the truncation")
					require.Equal(t, w.EndOffset(), rep.End)
				})
			}
		}
	}
}
