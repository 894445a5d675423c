package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// genRec is the record at off appended in generation gen (a TruncateBack
// starts a new generation, so rewritten offsets hold other bytes).
func genRec(gen int, off uint64) []byte { return []byte(fmt.Sprintf("gen %d offset %d", gen, off)) }

// waitWritten returns once the writer's background flush has written every
// record appended so far to the device (SyncNever: nothing syncs them), so
// a reader's scan finds them as frames.
func waitWritten(t *testing.T, w *Log) {
	t.Helper()
	for {
		w.mu.RLock()
		_, written := w.active.w.Written()
		next := w.active.w.NextOffset()
		w.mu.RUnlock()
		if written == next {
			return
		}
		runtime.Gosched()
	}
}

// appendGen appends n records of generation gen, one batch each.
func appendGen(t *testing.T, w *Log, gen, n int) {
	t.Helper()
	for range n {
		off := w.EndOffset()
		_, err := w.Append(genRec(gen, off))
		require.NoError(t, err)
	}
}

// requireOnlyAcknowledged checks that every record r shows is one the
// writer w has acknowledged, with the writer's bytes.
func requireOnlyAcknowledged(t *testing.T, w, r *Log, what string) {
	t.Helper()
	require.LessOrEqual(t, r.EndOffset(), w.DurableOffset(), "%s: the reader shows up to %d, the writer has acknowledged up to %d", what, r.EndOffset(), w.DurableOffset())
	for off := r.StartOffset(); off < r.EndOffset(); off++ {
		got, err := r.Read(off, nil)
		require.NoError(t, err, "%s: reader offset %d", what, off)
		want, err := w.Read(off, nil)
		require.NoError(t, err, "%s: writer offset %d", what, off)
		require.Equal(t, string(want), string(got), "%s: offset %d", what, off)
	}
}

// TestRefreshShowsOnlyAcknowledgedWhileWriterChanges sweeps what a writer
// (SyncNever: appends are acknowledged only by Sync) does in the middle
// of a reader's look — after the look read the writer's DURABLE words,
// and after it listed the directory — from two starting points (the
// reader already follows the writer's active segment, or the writer has
// moved to a segment the reader has not opened yet): appends with and
// without a sync, a roll, and a TruncateBack into the active segment, at
// its start, or into the segment before, each followed by appends the
// writer has not synced. Every look shows only records the writer has
// acknowledged, with the writer's bytes; only a TruncateBack may make
// Refresh fail (ErrRewritten, and a reopened reader is right again); and
// once the writer syncs, the reader catches up to exactly the writer.
// 28 cases, about a second.
func TestRefreshShowsOnlyAcknowledgedWhileWriterChanges(t *testing.T) {
	type action struct {
		name     string
		rewrites bool
		do       func(t *testing.T, w *Log)
	}
	truncate := func(t *testing.T, w *Log, from uint64) {
		require.NoError(t, w.TruncateBack(from))
		appendGen(t, w, 1, 5)
		waitWritten(t, w)
	}
	actions := []action{
		{"append", false, func(t *testing.T, w *Log) { appendGen(t, w, 0, 5); waitWritten(t, w) }},
		{"append-sync", false, func(t *testing.T, w *Log) { appendGen(t, w, 0, 5); require.NoError(t, w.Sync()) }},
		{"roll", false, func(t *testing.T, w *Log) {
			appendGen(t, w, 0, 3)
			require.NoError(t, w.Sync())
			require.NoError(t, w.Roll())
			appendGen(t, w, 0, 3)
			waitWritten(t, w)
		}},
		{"roll-sync", false, func(t *testing.T, w *Log) {
			appendGen(t, w, 0, 3)
			require.NoError(t, w.Roll())
			appendGen(t, w, 0, 3)
			require.NoError(t, w.Sync())
		}},
		{"truncate-active", true, func(t *testing.T, w *Log) {
			segs := w.Segments()
			truncate(t, w, segs[len(segs)-1].Base+2)
		}},
		{"truncate-at-active-start", true, func(t *testing.T, w *Log) {
			segs := w.Segments()
			truncate(t, w, segs[len(segs)-1].Base)
		}},
		{"truncate-earlier", true, func(t *testing.T, w *Log) {
			segs := w.Segments()
			truncate(t, w, segs[len(segs)-2].Base+1)
		}},
	}
	starts := []struct {
		name string
		do   func(t *testing.T, w, r *Log)
	}{
		{"known-active", func(t *testing.T, w, r *Log) {}},
		{"new-segment", func(t *testing.T, w, r *Log) {
			require.NoError(t, w.Roll())
			appendGen(t, w, 0, 40)
			require.NoError(t, w.Sync())
		}},
	}
	for _, st := range starts {
		for _, step := range []string{"words", "listed"} {
			for _, a := range actions {
				t.Run(st.name+"/"+step+"/"+a.name, func(t *testing.T) {
					opts := realOptions()
					opts.SyncMode = SyncNever
					path := t.TempDir()
					w, err := Open(path, opts)
					require.NoError(t, err)
					defer w.Close()
					appendGen(t, w, 0, 10)
					require.NoError(t, w.Roll())
					appendGen(t, w, 0, 10)
					require.NoError(t, w.Sync())
					ro := opts
					ro.ReadOnly = true
					r, err := Open(path, ro)
					require.NoError(t, err)
					defer func() { r.Close() }()
					_, err = r.Refresh()
					require.NoError(t, err)
					requireOnlyAcknowledged(t, w, r, "before")
					st.do(t, w, r)

					ran := false
					r.refreshHook = func(at string, _ *[]uint64) {
						if at == step && !ran {
							ran = true
							a.do(t, w)
						}
					}
					_, err = r.Refresh()
					r.refreshHook = nil
					require.True(t, ran, "the writer acted during the look")
					reopen := func(err error) {
						require.True(t, a.rewrites && errors.Is(err, ErrRewritten), "only a TruncateBack makes Refresh fail, with ErrRewritten: %v", err)
						r.Close()
						r, err = Open(path, ro)
						require.NoError(t, err)
					}
					if err != nil {
						reopen(err)
					}
					requireOnlyAcknowledged(t, w, r, "during")

					require.NoError(t, w.Sync())
					for range 2 { // a replaced file is found at the next look
						if _, err := r.Refresh(); err != nil {
							reopen(err)
						}
					}
					requireOnlyAcknowledged(t, w, r, "after")
					require.Equal(t, w.EndOffset(), r.EndOffset(), "after the writer's sync the reader shows every record")
					ws, rs := w.Segments(), r.Segments()
					require.Len(t, rs, len(ws))
					for i := range ws {
						require.Equal(t, ws[i].Sealed, rs[i].Sealed, "segment %d", ws[i].Base)
					}
				})
			}
		}
	}
}

// TestRefreshListingThatMissesANewSegmentIsNoRewrite: a directory listing
// made while the writer renames its next segment file into place may miss
// that file and show a later one. The look must list again (the file is
// there), not report that the writer rewrote the log.
func TestRefreshListingThatMissesANewSegmentIsNoRewrite(t *testing.T) {
	w, r := besideWriter(t)
	appendGen(t, w, 0, 10)
	require.NoError(t, w.Sync())
	_, err := r.Refresh()
	require.NoError(t, err)
	for range 2 { // two new segments after the one the reader follows
		require.NoError(t, w.Roll())
		appendGen(t, w, 0, 10)
	}
	require.NoError(t, w.Sync())
	missed := w.Segments()[1].Base
	looks := 0
	r.refreshHook = func(at string, bases *[]uint64) {
		if at != "listed" {
			return
		}
		if looks++; looks == 1 {
			*bases = slices.DeleteFunc(*bases, func(b uint64) bool { return b == missed })
		}
	}
	_, err = r.Refresh()
	require.NoError(t, err, "a listing that missed segment %d is no rewrite", missed)
	require.Equal(t, 2, looks, "the look listed the directory again")
	requireSameView(t, w, r, rand.New(rand.NewPCG(1, 1)))
}
