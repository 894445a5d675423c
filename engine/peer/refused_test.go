package peer

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// followerOptions are the options of the followers these tests open.
func followerOptions() engine.Options {
	o := engine.DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.Logger = 256<<10, 64<<10, quiet
	return o
}

// emptySealedSegment builds a sealed segment file at base holding no
// record: a header and a footer (count 0, no index entry), every checksum
// right, as a hostile leader can serve it.
func emptySealedSegment(t *testing.T, base uint64) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "empty.seg")
	dev, err := blockdev.Open(path, blockdev.Options{Create: true, Buffered: true})
	require.NoError(t, err)
	w, err := wal.Create(dev, base, wal.Options{MaxWrite: 64 << 10})
	require.NoError(t, err)
	// A version 2 footer with no entries: its head, the padding to the
	// (absent) blocks' 4 KiB position, and its trailer, checksummed with
	// the file's identity and the trailer's position.
	payload := int64(wal.DataStart + wal.FrameHeaderLen)
	blocksAt := (payload + 8 + 4095) &^ 4095
	footer := make([]byte, blocksAt-payload+48)
	binary.LittleEndian.PutUint32(footer[0:], 2) // version
	tr := footer[len(footer)-48:]
	binary.LittleEndian.PutUint32(tr[0:], 2)              // version
	binary.LittleEndian.PutUint64(tr[16:], wal.DataStart) // data end
	binary.LittleEndian.PutUint32(tr[24:], 4096)          // interval
	binary.LittleEndian.PutUint64(tr[36:], uint64(blocksAt))
	var seed [16]byte
	binary.LittleEndian.PutUint64(seed[0:], w.Header().SegmentID)
	binary.LittleEndian.PutUint64(seed[8:], uint64(blocksAt))
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	binary.LittleEndian.PutUint32(tr[44:], crc32.Update(crc32.Checksum(seed[:], castagnoli), castagnoli, tr[:44]))
	_, err = w.Seal(footer)
	require.NoError(t, err)
	require.NoError(t, dev.Close())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// emptySegmentLeader is a hostile leader that lists list and serves file
// as segment base; its tail answers 204 at once.
func emptySegmentLeader(base uint64, file []byte, list string) *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/segments"):
			fmt.Fprint(w, list)
		case strings.HasSuffix(r.URL.Path, fmt.Sprintf("/segments/%d", base)):
			w.Header().Set("Content-Length", strconv.Itoa(len(file)))
			w.Write(file)
		default:
			w.Header().Set("Segstore-Sealed", "false")
			w.Header().Set("Segstore-Size", "0")
			w.WriteHeader(http.StatusNoContent)
		}
	}))
}

// emptySealedList lists an empty sealed segment at base, then an empty
// active one at base.
func emptySealedList(base uint64, size int) string {
	return fmt.Sprintf(`[{"base":%d,"next":%d,"last":null,"size":%d,"sealed":true,"checksum":"00000000"},{"base":%d,"next":%d,"last":null,"size":0,"sealed":false,"checksum":""}]`,
		base, base, size, base, base)
}

// TestEmptySealedSegmentIsRefused: a sealed segment with no records
// (which no log writes: the segment after it would start at the same
// offset, under the same file name) is refused as an import, at a new
// log's start and at the end of one with records; the log stays writable
// and its directory reopens with what it held.
func TestEmptySealedSegmentIsRefused(t *testing.T) {
	for _, records := range []int{0, 3} {
		t.Run(fmt.Sprintf("after %d batches", records), func(t *testing.T) {
			dir := t.TempDir()
			l, err := engine.Open(dir, followerOptions())
			require.NoError(t, err)
			appendBatches(t, l, records)
			require.NoError(t, l.Roll())
			end := l.EndOffset()
			file := emptySealedSegment(t, end)
			_, err = l.ImportSegment(bytes.NewReader(file), end, int64(len(file)))
			require.ErrorIs(t, err, engine.ErrImport)
			assert.ErrorContains(t, err, "sealed with no records")
			_, err = l.Append([]byte("after the import"))
			require.NoError(t, err)
			require.NoError(t, l.Close())
			l, err = engine.Open(dir, followerOptions())
			require.NoError(t, err, "the log reopens after the refused import")
			defer l.Close()
			rec, err := l.Read(end, nil)
			require.NoError(t, err)
			assert.Equal(t, "after the import", string(rec))
		})
	}
}

// TestHostileLeaderCannotBrickTheFollower: a leader that lists an empty
// sealed segment at the follower's end (and serves its file) has that
// answer refused: the follower's log still takes changes, and its
// directory opens with every record it held.
func TestHostileLeaderCannotBrickTheFollower(t *testing.T) {
	dir := t.TempDir()
	follower, err := engine.Open(dir, followerOptions())
	require.NoError(t, err)
	appendBatches(t, follower, 10) // records it had (imported earlier, say)
	require.NoError(t, follower.Roll())
	end := follower.EndOffset()
	file := emptySealedSegment(t, end)
	ts := emptySegmentLeader(end, file, emptySealedList(end, len(file)))
	defer ts.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var stats FollowStats
	_ = Follow(ctx, ts.URL, follower, FollowOptions{Name: "main", Logger: quiet, Progress: func(s FollowStats) { stats = s }})
	assert.Positive(t, stats.Failures, "the answer was refused")
	assert.Contains(t, stats.LastFailure, "sealed with no records")
	_, err = follower.Append([]byte("x"))
	require.NoError(t, follower.Close())
	assert.NoError(t, err, "the follower's log still works after a refused answer")
	l, err := engine.Open(dir, followerOptions())
	require.NoError(t, err, "the follower's directory still opens")
	defer l.Close()
	_, err = l.Read(end-1, nil)
	assert.NoError(t, err)
}

// rewriteLastBatch cuts the leader's last batch (TruncateBack) and appends
// one of the same shape as appendBatches' (8 records of the same lengths)
// with other contents: what a raft leader does when it overwrites a
// conflicting suffix with entries of the same sizes.
func rewriteLastBatch(t *testing.T, l *engine.Log) {
	t.Helper()
	require.NoError(t, l.TruncateBack(l.EndOffset()-8))
	batch := make([][]byte, 8)
	for i := range batch {
		label := fmt.Sprintf("RECORD %08d ", l.EndOffset()+uint64(i))
		batch[i] = testutil.Labelled(label, 'Q', len(label)+100) // appendBatches' sizes
	}
	_, err := l.Append(batch...)
	require.NoError(t, err)
}

// TestRewrittenSegmentWithTheSameFooterIsDivergence: a leader that cuts a
// sealed segment the follower holds and refills it with records of the
// same sizes seals a file whose list entry (base, next) is the same as
// before; the follower stops with ErrDiverged instead of going on after
// records that are not the leader's any more. (With footers of version 1
// the footer checksum was the same too and only the file's SegmentID told
// the files apart; a version 2 footer's checksums bind the SegmentID, so
// the footer checksum differs already.)
func TestRewrittenSegmentWithTheSameFooterIsDivergence(t *testing.T) {
	leader, addr := servedLeader(t)
	follower := openLog(t, t.TempDir())
	defer follower.Close()
	stop := follow("http://"+addr, follower)
	waitFor(t, "the follower to catch up", func() bool { return follower.EndOffset() == leader.EndOffset() })
	require.ErrorIs(t, stop(), context.Canceled)
	before := leader.Segments()

	cut := leader.EndOffset() - 8
	rewriteLastBatch(t, leader)
	require.NoError(t, leader.Roll())
	after := leader.Segments()
	// Its footer differs only because a version 2 footer's checksums bind
	// the file's SegmentID; the follower's check does not depend on it.
	require.NotEqual(t, before[len(before)-2].FooterCRC, after[len(after)-2].FooterCRC, "a rewritten segment's footer binds its new SegmentID")
	appendBatches(t, leader, 5)
	require.NoError(t, leader.Roll())

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := Follow(ctx, "http://"+addr, follower, FollowOptions{Name: "main", Wait: 100 * time.Millisecond, Logger: quiet})
	require.ErrorIs(t, err, ErrDiverged, "the leader rewrote records the follower holds (follower now ends at %d, leader at %d)", follower.EndOffset(), leader.EndOffset())
	assert.Equal(t, cut+8, follower.EndOffset(), "nothing imported after the rewritten segment")
}

// countingServer serves h, counting its requests.
func countingServer(h http.Handler) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { n.Add(1); h.ServeHTTP(w, r) })), &n
}

// TestFollowerPollRateIsBoundedByMinPoll: a leader that answers every
// tail poll at once with nothing (here a fake one; below, a segstore
// server whose MaxWait is shorter than the follower's Wait) is polled at
// most once per MinPoll: each step (a list and a tail request) begins at
// least MinPoll after the one before, so a window of w holds at most
// w/MinPoll + 1 steps, however fast the machine.
func TestFollowerPollRateIsBoundedByMinPoll(t *testing.T) {
	ts, requests := countingServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/segments"):
			fmt.Fprint(w, `[{"base":0,"next":0,"last":null,"size":0,"sealed":false,"checksum":""}]`)
		case strings.HasSuffix(r.URL.Path, "/tail"):
			w.Header().Set("Segstore-Sealed", "false")
			w.Header().Set("Segstore-Size", "0")
			w.Header().Set("Segstore-Next", "0")
			w.WriteHeader(http.StatusNoContent)
		default:
			http.NotFound(w, r)
		}
	}))
	defer ts.Close()
	for _, tc := range []struct {
		name    string
		minPoll time.Duration // 0: the default, 1s (Wait is 10s)
		window  time.Duration
	}{
		{"default", 0, time.Second},
		{"100ms", 100 * time.Millisecond, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			follower := openLog(t, t.TempDir())
			defer follower.Close()
			before := requests.Load()
			ctx, cancel := context.WithTimeout(context.Background(), tc.window)
			defer cancel()
			err := Follow(ctx, ts.URL, follower, FollowOptions{Name: "main", Logger: quiet, MinPoll: tc.minPoll})
			require.ErrorIs(t, err, context.DeadlineExceeded)
			floor := cmp.Or(tc.minPoll, time.Second)
			maxSteps := int64(tc.window/floor) + 1
			assert.LessOrEqual(t, requests.Load()-before, 2*maxSteps, "requests in %s with MinPoll %s: a list and a tail per step, at most %d steps", tc.window, floor, maxSteps)
		})
	}
}

// TestFollowerPollRateAgainstAShortMaxWait: a caught-up follower asking
// for 10 s long polls of a server that holds them 10 ms makes a list and
// a tail request per MinPoll (1s by default), not one every 10 ms.
func TestFollowerPollRateAgainstAShortMaxWait(t *testing.T) {
	leader := openLog(t, t.TempDir())
	defer leader.Close()
	appendBatches(t, leader, 5)
	ts, requests := countingServer(NewServer(map[string]*engine.Log{"main": leader}, ServerOptions{MaxWait: 10 * time.Millisecond}))
	defer ts.Close()
	follower := openLog(t, t.TempDir())
	defer follower.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := Follow(ctx, ts.URL, follower, FollowOptions{Name: "main", Wait: 10 * time.Second, Logger: quiet})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	// One step that stages the active segment, then at most 2/1 + 1 idle ones.
	assert.LessOrEqual(t, requests.Load(), int64(2*(1+3)), "requests in 2 s by a caught-up follower")
}

// TestMinPollDoesNotDelayData: with a MinPoll far longer than the test, a
// follower still receives each batch the leader appends, at once: a step
// that brings data is followed by the next poll without a pause (the wait
// below is a liveness bound, a minute; a paused follower would wait an
// hour).
func TestMinPollDoesNotDelayData(t *testing.T) {
	leader := openLog(t, t.TempDir())
	defer leader.Close()
	appendBatches(t, leader, 1)
	ts, _ := countingServer(NewServer(map[string]*engine.Log{"main": leader}, ServerOptions{MaxWait: time.Minute}))
	defer ts.Close()
	follower := openLog(t, t.TempDir())
	defer follower.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var staged atomic.Int64
	go func() {
		done <- Follow(ctx, ts.URL, follower, FollowOptions{Name: "main", Wait: time.Minute, MinPoll: time.Hour, Logger: quiet,
			Progress: func(s FollowStats) { staged.Store(s.Staged) }})
	}()
	for i := range 5 {
		if i > 0 {
			appendBatches(t, leader, 1)
		}
		segs := leader.Segments()
		want := segs[len(segs)-1].ExportSize()
		waitFor(t, fmt.Sprintf("batch %d to be staged", i), func() bool { return staged.Load() == want })
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}

// TestFollowStopsOnAFailedLog: once the follower's log has failed (an
// import's last step failed: it takes no more changes until reopened),
// Follow returns that error instead of retrying what cannot succeed.
func TestFollowStopsOnAFailedLog(t *testing.T) {
	leader, addr := servedLeader(t)
	dir := t.TempDir()
	follower, err := engine.Open(dir, followerOptions())
	require.NoError(t, err)
	defer follower.Close()
	// A directory where the active segment after the imported one goes:
	// creating it fails, and the log with it.
	segs := leader.Segments()
	require.NoError(t, os.Mkdir(filepath.Join(dir, fmt.Sprintf("%020d.seg", segs[0].Next)), 0o755))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stats FollowStats
	err = Follow(ctx, "http://"+addr, follower, FollowOptions{Name: "main", Logger: quiet, Progress: func(s FollowStats) { stats = s }})
	require.ErrorIs(t, err, engine.ErrFailed)
	assert.NotErrorIs(t, err, context.DeadlineExceeded)
	assert.ErrorContains(t, err, "reopen")
	assert.Equal(t, 1, stats.Failures, "the failure is not retried")
	_, err = follower.Append([]byte("x"))
	assert.ErrorIs(t, err, engine.ErrFailed)
}

// TestFollowStopsOnALogThatTakesNoImports: Follow on a closed log, or one
// opened read-only, returns at once with the log's error (no panic, no
// retries).
func TestFollowStopsOnALogThatTakesNoImports(t *testing.T) {
	_, addr := servedLeader(t)
	for _, tc := range []struct {
		name string
		open func(t *testing.T, dir string) *engine.Log
		want error
	}{
		{"closed", func(t *testing.T, dir string) *engine.Log {
			l := openLog(t, dir)
			require.NoError(t, l.Close())
			return l
		}, engine.ErrClosed},
		{"read-only", func(t *testing.T, dir string) *engine.Log {
			require.NoError(t, openLog(t, dir).Close())
			o := followerOptions()
			o.ReadOnly = true
			l, err := engine.Open(dir, o)
			require.NoError(t, err)
			t.Cleanup(func() { l.Close() })
			return l
		}, engine.ErrReadOnly},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.open(t, t.TempDir())
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			var stats FollowStats
			err := Follow(ctx, "http://"+addr, l, FollowOptions{Name: "main", Logger: quiet, Progress: func(s FollowStats) { stats = s }})
			require.ErrorIs(t, err, tc.want)
			assert.Equal(t, 1, stats.Failures)
		})
	}
}

// servedLeader is a leader log with 20 batches in a sealed segment and an
// empty active one, served on loopback until the test ends.
func servedLeader(t *testing.T) (*engine.Log, string) {
	leader := openLog(t, t.TempDir())
	t.Cleanup(func() { leader.Close() })
	appendBatches(t, leader, 20)
	require.NoError(t, leader.Roll())
	addr, stopServer := server(t, "127.0.0.1:0", leader)
	t.Cleanup(stopServer)
	return leader, addr
}
