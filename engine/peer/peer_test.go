package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/engine/internal/stracetest"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openLog(t *testing.T, dir string) *engine.Log {
	t.Helper()
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.Logger = 256<<10, 64<<10, quiet
	l, err := engine.Open(dir, opts)
	require.NoError(t, err)
	return l
}

func appendBatches(t *testing.T, l *engine.Log, n int) {
	t.Helper()
	for range n {
		batch := make([][]byte, 8)
		for i := range batch {
			label := fmt.Sprintf("record %08d ", l.EndOffset()+uint64(i))
			batch[i] = testutil.Labelled(label, 'z', len(label)+100)
		}
		_, err := l.Append(batch...)
		require.NoError(t, err)
	}
}

func getBody(t *testing.T, url string, header http.Header) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, b
}

func TestServerEndpoints(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	defer l.Close()
	appendBatches(t, l, 600) // several sealed 256 KiB segments
	srv := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{})
	ts := httptest.NewServer(srv)
	defer ts.Close()

	resp, b := getBody(t, ts.URL+"/v1/logs", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var logs []LogInfo
	require.NoError(t, json.Unmarshal(b, &logs))
	require.Equal(t, []LogInfo{{Name: "main", Start: 0, End: l.DurableOffset(), Segments: len(l.Segments())}}, logs)

	resp, b = getBody(t, ts.URL+"/v1/logs/main/segments", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var segs []SegmentEntry
	require.NoError(t, json.Unmarshal(b, &segs))
	require.Greater(t, len(segs), 2)
	sealed := segs[1]
	require.True(t, sealed.Sealed)
	require.Len(t, sealed.Checksum, 8)
	file, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%020d.seg", sealed.Base)))
	require.NoError(t, err)
	require.Equal(t, int64(len(file)), sealed.Size)

	segURL := fmt.Sprintf("%s/v1/logs/main/segments/%d", ts.URL, sealed.Base)
	resp, b = getBody(t, segURL, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, file, b, "the whole sealed file")
	etag := resp.Header.Get("ETag")
	require.NotEmpty(t, etag)
	resp, _ = getBody(t, segURL, http.Header{"If-None-Match": {etag}})
	assert.Equal(t, http.StatusNotModified, resp.StatusCode)

	for _, rg := range []struct {
		header   string
		from, to int // expected bytes [from, to)
	}{{"bytes=0-99", 0, 100}, {"bytes=4093-8200", 4093, 8201}, {"bytes=1000-", 1000, len(file)}, {"bytes=-17", len(file) - 17, len(file)}} {
		resp, b = getBody(t, segURL, http.Header{"Range": {rg.header}})
		require.Equal(t, http.StatusPartialContent, resp.StatusCode, rg.header)
		assert.Equal(t, file[rg.from:rg.to], b, rg.header)
	}
	for _, bad := range []string{"bytes=99999999-", "bytes=5-2", "bytes=0-1,5-6", "items=0-1"} {
		resp, _ = getBody(t, segURL, http.Header{"Range": {bad}})
		assert.Equal(t, http.StatusRequestedRangeNotSatisfiable, resp.StatusCode, bad)
	}
	for path, code := range map[string]int{
		"/v1/logs/nope/segments":                 http.StatusNotFound,
		"/v1/logs/main/segments/12x":             http.StatusBadRequest,
		"/v1/logs/main/segments/1":               http.StatusNotFound,
		"/v1/logs/main/segments/..%2Fetc":        http.StatusBadRequest,
		"/v1/logs/main/tail?base=0":              http.StatusBadRequest,
		"/v1/logs/main/tail?base=0&pos=-1":       http.StatusBadRequest,
		"/v1/logs/main/tail?base=0&pos=0&wait=x": http.StatusBadRequest,
	} {
		resp, _ = getBody(t, ts.URL+path, nil)
		assert.Equal(t, code, resp.StatusCode, path)
	}

	// The active segment: up to its durable end, and the tail waits.
	active := segs[len(segs)-1]
	require.False(t, active.Sealed)
	tailURL := fmt.Sprintf("%s/v1/logs/main/tail?base=%d&pos=%d&wait=50ms", ts.URL, active.Base, active.Size)
	resp, _ = getBody(t, tailURL, nil)
	assert.Equal(t, http.StatusNoContent, resp.StatusCode, "nothing new within the wait")
	go func() {
		time.Sleep(20 * time.Millisecond)
		appendBatches(t, l, 1)
	}()
	resp, b = getBody(t, strings.Replace(tailURL, "wait=50ms", "wait=10s", 1), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	assert.NotEmpty(t, b, "the new frame, as soon as it is durable")

	resp, b = getBody(t, ts.URL+"/metrics", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	for _, m := range []string{`segstore_peer_requests_total{code="206",endpoint="segment"}`, `segstore_peer_sent_bytes_total{path="sendfile"}`,
		`segstore_appends_total{log="main"}`, `segstore_cache_hits_total{log="main"}`, "segstore_peer_tail_waiters",
		`segstore_fsync_seconds_bucket{log="main",le="0.001"}`, `segstore_flush_appends_count{log="main"}`} {
		assert.Contains(t, string(b), m)
	}
	assert.Positive(t, l.Stats().ExportSendfileBytes, "responses went by sendfile")
}

// TestReadMetrics: the point-read counters are served as Stats has them:
// reads of the batches just appended (fresh, no device bytes), then of
// records read back from the device after a reopen.
func TestReadMetrics(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	appendBatches(t, l, 4)
	for i := range uint64(8) {
		_, err := l.Read(i, nil)
		require.NoError(t, err)
	}
	require.NoError(t, l.Close())
	l = openLog(t, dir)
	defer l.Close()
	for _, i := range []uint64{7, 5, 3, 1, 6, 4, 2, 0} { // no run: nothing read ahead while the test looks
		_, err := l.Read(i, nil)
		require.NoError(t, err)
	}
	st := l.Stats()
	require.Equal(t, int64(8), st.PointReads)
	require.Zero(t, st.FreshHits, "nothing appended since the reopen")
	require.Positive(t, st.ReadDeviceBytes)
	ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{}))
	defer ts.Close()
	_, b := getBody(t, ts.URL+"/metrics", nil)
	for name, v := range map[string]int64{"segstore_point_reads_total": st.PointReads, "segstore_point_read_device_bytes_total": st.ReadDeviceBytes,
		"segstore_point_read_fresh_hits_total": st.FreshHits, "segstore_cache_misses_total": st.Cache.Misses,
		"segstore_point_read_ahead_hits_total": st.ReadAheadHits, "segstore_point_read_ahead_bytes_total": st.ReadAheadBytes} {
		// Prometheus writes values as Go's shortest 'g' form.
		assert.Contains(t, string(b), fmt.Sprintf("%s{log=\"main\"} %s\n", name, strconv.FormatFloat(float64(v), 'g', -1, 64)))
	}
}

func TestServerSecurity(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 10)
	ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{Token: "s3cret"}))
	defer ts.Close()
	resp, _ := getBody(t, ts.URL+"/v1/logs", nil)
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, _ = getBody(t, ts.URL+"/v1/logs", http.Header{"Authorization": {"Bearer wrong"}})
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp, _ = getBody(t, ts.URL+"/v1/logs", http.Header{"Authorization": {"Bearer s3cret"}})
	assert.Equal(t, http.StatusOK, resp.StatusCode)

	// Without a token only loopback clients are served.
	open := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{})
	for addr, code := range map[string]int{"127.0.0.1:5000": http.StatusOK, "[::1]:5000": http.StatusOK, "10.1.2.3:5000": http.StatusForbidden} {
		req := httptest.NewRequest(http.MethodGet, "/v1/logs", nil)
		req.RemoteAddr, req.Host = addr, "localhost:7070"
		rec := httptest.NewRecorder()
		open.ServeHTTP(rec, req)
		assert.Equal(t, code, rec.Code, addr)
	}
}

func TestCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("curl is not installed")
	}
	dir := t.TempDir()
	l := openLog(t, dir)
	defer l.Close()
	appendBatches(t, l, 300)
	ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{}))
	defer ts.Close()
	out := filepath.Join(t.TempDir(), "seg")
	got, err := exec.Command(curl, "-sS", "-f", "-o", out, "-w", "%{http_code}", ts.URL+"/v1/logs/main/segments/0").CombinedOutput()
	require.NoError(t, err, "%s", got)
	assert.Equal(t, "200", string(got))
	want, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%020d.seg", 0)))
	have, _ := os.ReadFile(out)
	assert.Equal(t, want, have)
}

// server runs a Server for l on addr ("127.0.0.1:0" picks a port) and
// returns its address and a stop function.
func server(t *testing.T, addr string, l *engine.Log) (string, func()) {
	t.Helper()
	var ln net.Listener
	var err error
	for range 50 { // a restart on the same port may wait for the old socket
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, err)
	hs := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{MaxWait: time.Second}).HTTPServer("")
	go hs.Serve(ln)
	return ln.Addr().String(), func() { hs.Close() }
}

// maxStaged is the most bytes of an active segment any follower staged;
// lastLag the lag a follower's gauge showed last; lastStats its last figures.
var (
	maxStaged, lastLag atomic.Int64
	lastStats          atomic.Pointer[FollowStats]
)

// follow runs Follow in a goroutine; stop cancels it and returns its error
// (the same error on every call).
func follow(url string, l *engine.Log) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	reg := prometheus.NewRegistry()
	go func() {
		done <- Follow(ctx, url, l, FollowOptions{Name: "main", Wait: 200 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: quiet,
			Registry: reg,
			Progress: func(s FollowStats) {
				lastStats.Store(&s)
				if s.Staged > maxStaged.Load() {
					maxStaged.Store(s.Staged)
				}
				if mfs, err := reg.Gather(); err == nil {
					for _, mf := range mfs {
						if mf.GetName() == "segstore_follower_lag_records" {
							lastLag.Store(int64(mf.GetMetric()[0].GetGauge().GetValue()))
						}
					}
				}
			}})
	}()
	return sync.OnceValue(func() error { cancel(); return <-done })
}

// waitFor polls cond for up to a minute (a liveness wait, not a timing check).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// TestFollowerReplicatesByteForByte: a follower catches up and tails while
// the leader appends; it is killed mid-segment and restarted, the leader
// is restarted; in the end the follower's segments equal the leader's.
func TestFollowerReplicatesByteForByte(t *testing.T) {
	leaderDir, followerDir := t.TempDir(), t.TempDir()
	leader := openLog(t, leaderDir)
	appendBatches(t, leader, 500) // a backlog to catch up on
	addr, stopServer := server(t, "127.0.0.1:0", leader)
	url := "http://" + addr

	var mu sync.Mutex // guards leader across its restart
	appending := make(chan struct{})
	appendDone := make(chan struct{})
	go func() {
		defer close(appendDone)
		for {
			select {
			case <-appending:
				return
			default:
			}
			mu.Lock()
			appendBatches(t, leader, 5)
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()

	follower := openLog(t, followerDir)
	stop := follow(url, follower)
	waitFor(t, "the follower to import a segment", func() bool { return follower.EndOffset() > 0 })
	require.ErrorIs(t, stop(), context.Canceled, "killed mid-segment")
	require.NoError(t, follower.Close())

	follower = openLog(t, followerDir) // restarted
	stop = follow(url, follower)
	waitFor(t, "the follower to move on after its restart", func() bool { return follower.EndOffset() > 4000 })

	mu.Lock() // the leader restarts
	stopServer()
	require.NoError(t, leader.Close())
	leader = openLog(t, leaderDir)
	_, stopServer = server(t, addr, leader)
	mu.Unlock()
	waitFor(t, "the follower to follow the restarted leader", func() bool { return follower.EndOffset() > leader.StartOffset()+8000 })

	close(appending)
	<-appendDone
	require.NoError(t, leader.Roll()) // seal everything
	end := leader.EndOffset()
	waitFor(t, "the follower to catch up", func() bool { return follower.EndOffset() == end })
	require.ErrorIs(t, stop(), context.Canceled)
	stopServer()
	assert.Zero(t, lastLag.Load(), "no lag once caught up")

	mine, theirs := follower.Segments(), leader.Segments()
	require.Equal(t, len(theirs), len(mine))
	for i, s := range theirs {
		if !s.Sealed {
			continue
		}
		a, err := os.ReadFile(filepath.Join(leaderDir, s.File))
		require.NoError(t, err)
		b, err := os.ReadFile(filepath.Join(followerDir, mine[i].File))
		require.NoError(t, err)
		require.True(t, bytes.Equal(a, b), "segment %s byte for byte", s.File)
	}
	rec, err := follower.Read(end-1, nil)
	require.NoError(t, err)
	want, _ := leader.Read(end-1, nil)
	assert.Equal(t, want, rec)
	assert.Positive(t, maxStaged.Load(), "the follower tailed an active segment")
	require.NoError(t, follower.Close())
	require.NoError(t, leader.Close())
}

// caughtUp serves a leader of sealed segments and returns it with a
// follower that has caught up with it (and goes on following until stop).
// Everything is closed when the test ends.
func caughtUp(t *testing.T) (leader, follower *engine.Log, addr string, stop func() error) {
	t.Helper()
	leader = openLog(t, t.TempDir())
	t.Cleanup(func() { leader.Close() })
	appendBatches(t, leader, 400)
	require.NoError(t, leader.Roll())
	addr, stopServer := server(t, "127.0.0.1:0", leader)
	t.Cleanup(stopServer)
	follower = openLog(t, t.TempDir())
	t.Cleanup(func() { follower.Close() })
	stop = follow("http://"+addr, follower)
	waitFor(t, "the follower to catch up", func() bool { return follower.EndOffset() == leader.EndOffset() })
	return leader, follower, addr, stop
}

// TestFollowerStopsOnDivergence: a leader truncated behind its follower
// and grown again makes Follow stop with ErrDiverged.
func TestFollowerStopsOnDivergence(t *testing.T) {
	leader, follower, addr, stop := caughtUp(t)
	end := leader.EndOffset()
	require.NoError(t, leader.TruncateBack(end/2))
	appendBatches(t, leader, 400)
	require.NoError(t, leader.Roll())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg := prometheus.NewRegistry()
	err := Follow(ctx, "http://"+addr, follower, FollowOptions{Name: "main", Logger: quiet, Registry: reg})
	require.ErrorIs(t, err, ErrDiverged)
	assert.ErrorContains(t, err, "differs from the follower's")
	stop() // the running follower stops too, on divergence or on cancel
	assert.Equal(t, end, follower.EndOffset(), "nothing of the diverged leader was imported")
}

// stagedAll serves a leader with sealed segments and records in its active
// segment, and follows it until the follower has staged all of the active
// segment's durable bytes. It returns the leader's active segment and the
// bytes staged, and leaves the follower stopped.
func stagedAll(t *testing.T) (leader, follower *engine.Log, addr string, active engine.SegmentInfo) {
	t.Helper()
	leader = openLog(t, t.TempDir())
	t.Cleanup(func() { leader.Close() })
	appendBatches(t, leader, 400)
	require.NoError(t, leader.Roll())
	appendBatches(t, leader, 30)
	segs := leader.Segments()
	active = segs[len(segs)-1]
	require.False(t, active.Sealed)
	require.Greater(t, active.Next, active.Base)
	addr, stopServer := server(t, "127.0.0.1:0", leader)
	t.Cleanup(stopServer)
	follower = openLog(t, t.TempDir())
	t.Cleanup(func() { follower.Close() })
	lastStats.Store(nil)
	stop := follow("http://"+addr, follower)
	waitFor(t, "the follower to stage the active segment", func() bool {
		s := lastStats.Load()
		return s != nil && s.Staged == active.ExportSize()
	})
	require.ErrorIs(t, stop(), context.Canceled)
	require.Equal(t, active.Base, follower.EndOffset(), "staged records are not the follower's until sealed")
	return leader, follower, addr, active
}

// leaderFile reads a file of the leader's directory.
func leaderFile(t *testing.T, l *engine.Log, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(l.Dir(), name))
	require.NoError(t, err)
	return b
}

// TestStageIsDurableAndResumed: what a follower received of the active
// segment is on its disk, byte for byte; a restarted follower continues
// from it without fetching it again, and imports the segment once sealed.
func TestStageIsDurableAndResumed(t *testing.T) {
	leader, follower, addr, active := stagedAll(t)
	staged, err := os.ReadFile(filepath.Join(follower.Dir(), StageFile))
	require.NoError(t, err)
	assert.Equal(t, leaderFile(t, leader, active.File)[:active.ExportSize()], staged)

	sent := func() int64 { st := leader.Stats(); return st.ExportSendfileBytes + st.ExportCopiedBytes }
	// The stopped follower's last long poll may still be ending on the
	// leader's side: count from when no response is in flight.
	waitFor(t, "the leader to finish the stopped follower's requests", func() bool {
		_, b := getBody(t, "http://"+addr+"/metrics", nil)
		return strings.Contains(string(b), "\nsegstore_peer_active_exports 0\n")
	})
	// Each step reads the header of the follower's last sealed segment
	// from the leader (a 206 of wal.FileHeaderLen bytes), and the import
	// from the stage reads the sealed segment's header block again (a 206
	// of wal.DataStart bytes): counted apart.
	headerReads := func() int64 {
		_, b := getBody(t, "http://"+addr+"/metrics", nil)
		m := regexp.MustCompile(`segstore_peer_requests_total\{code="206",endpoint="segment"\} (\d+)`).FindSubmatch(b)
		if m == nil {
			return 0
		}
		n, err := strconv.ParseInt(string(m[1]), 10, 64)
		require.NoError(t, err)
		return n
	}
	before, headersBefore := sent(), headerReads()
	appendBatches(t, leader, 5)
	require.NoError(t, leader.Roll())
	end := leader.EndOffset()
	stop := follow("http://"+addr, follower) // restarted
	segs := leader.Segments()
	sealed, next := segs[len(segs)-2], segs[len(segs)-1]
	require.Equal(t, active.Base, sealed.Base)
	waitFor(t, "the follower to import the sealed segment and stage the next", func() bool {
		s := lastStats.Load()
		return follower.EndOffset() == end && s != nil && s.Staged == next.ExportSize()
	})
	require.ErrorIs(t, stop(), context.Canceled)
	headers := headerReads() - headersBefore
	require.Greater(t, headers, int64(1), "the follower checks the leader's file of its last sealed segment, and restages a header block")
	assert.Equal(t, sealed.ExportSize()-active.ExportSize()+next.ExportSize(), sent()-before-(headers-1)*wal.FileHeaderLen-wal.DataStart,
		"sent: what was not staged before the restart, and the next segment's header (besides the header checks and the restaged header block)")
	assert.Equal(t, leaderFile(t, leader, sealed.File), leaderFile(t, follower, sealed.File), "byte for byte")
	rec, err := follower.Read(end-1, nil)
	require.NoError(t, err)
	want, _ := leader.Read(end-1, nil)
	assert.Equal(t, want, rec)
}

// openBigSegments opens a log with 8 MiB segments, whose high-water mark
// moves several times before a roll: in path, or on d when d is not nil.
func openBigSegments(path string, d blockdev.Dir) (*engine.Log, error) {
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.Logger, opts.Dir = 8<<20, 64<<10, quiet, d
	return engine.Open(path, opts)
}

// appendBytes appends n bytes of records, eight of 4 KiB per batch.
func appendBytes(t *testing.T, l *engine.Log, n int) {
	t.Helper()
	for ; n > 0; n -= 32 << 10 {
		batch := make([][]byte, 8)
		for i := range batch {
			batch[i] = testutil.Labelled(fmt.Sprintf("record %08d ", l.EndOffset()+uint64(i)), 'h', 4<<10)
		}
		_, err := l.Append(batch...)
		require.NoError(t, err)
	}
}

// TestStagedSegmentCarriesTheLeadersHighWaterMark: the leader rewrites its
// high-water mark (header block, byte 512) about once per MiB of data, so
// a follower that staged the header block at its first tail answer holds
// an older mark than the segment the leader seals. The segment imported
// from the stage must still be the leader's file byte for byte.
func TestStagedSegmentCarriesTheLeadersHighWaterMark(t *testing.T) {
	open := func(dir string) *engine.Log {
		l, err := openBigSegments(dir, nil)
		require.NoError(t, err)
		t.Cleanup(func() { l.Close() })
		return l
	}
	leader := open(t.TempDir())
	appendBytes(t, leader, 64<<10)
	active := leader.Segments()[0]
	require.False(t, active.Sealed)
	addr, stopServer := server(t, "127.0.0.1:0", leader)
	t.Cleanup(stopServer)
	follower := open(t.TempDir())
	lastStats.Store(nil)
	stop := follow("http://"+addr, follower)
	defer stop()
	waitFor(t, "the follower to stage the start of the active segment", func() bool {
		s := lastStats.Load()
		return s != nil && s.Staged == active.ExportSize()
	})
	staged := leaderFile(t, leader, active.File)[:wal.DataStart]

	appendBytes(t, leader, 3<<20) // past the leader's mark: it moves
	require.NoError(t, leader.Roll())
	sealed := leader.Segments()[0]
	require.True(t, sealed.Sealed)
	want := leaderFile(t, leader, sealed.File)
	require.NotEqual(t, staged, want[:wal.DataStart], "the leader's mark moved after the follower staged its header block")
	waitFor(t, "the follower to import the sealed segment", func() bool { return follower.EndOffset() == sealed.Next })
	require.ErrorIs(t, stop(), context.Canceled)
	require.Equal(t, 1, lastStats.Load().Imported, "imported from the stage, not fetched whole")
	got := leaderFile(t, follower, sealed.File)
	require.Equal(t, len(want), len(got))
	assert.Equal(t, want[:wal.DataStart], got[:wal.DataStart], "the header block, high-water mark included")
	assert.True(t, bytes.Equal(want, got), "the imported file is the leader's byte for byte")
}

// TestStageOfARewrittenSegment: the leader cut its active segment
// (TruncateBack) below what the follower staged; the follower drops the
// stale stage, fetches the segment again and ends byte-identical.
func TestStageOfARewrittenSegment(t *testing.T) {
	leader, follower, addr, active := stagedAll(t)
	require.NoError(t, leader.TruncateBack(active.Base+2))
	_, err := leader.Append([]byte("after the cut"))
	require.NoError(t, err)
	require.NoError(t, leader.Roll())
	end := leader.EndOffset()

	stop := follow("http://"+addr, follower)
	waitFor(t, "the follower to import the rewritten segment", func() bool { return follower.EndOffset() == end })
	require.ErrorIs(t, stop(), context.Canceled)
	assert.Equal(t, leaderFile(t, leader, active.File), leaderFile(t, follower, active.File), "byte for byte")
	rec, err := follower.Read(end-1, nil)
	require.NoError(t, err)
	assert.Equal(t, "after the cut", string(rec))
}

// TestPromote: the leader is lost with records in its active segment; the
// follower, whose stage was left with a torn write after them, promotes
// the staged records into its log, appends after them, and refuses to
// follow again.
func TestPromote(t *testing.T) {
	leader, follower, addr, active := stagedAll(t)
	stage := filepath.Join(follower.Dir(), StageFile)
	f, err := os.OpenFile(stage, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write(bytes.Repeat([]byte{0xa5}, 700)) // a write in flight at a crash
	require.NoError(t, err)
	require.NoError(t, f.Close())

	added, err := Promote(follower)
	require.NoError(t, err)
	assert.Equal(t, active.Next-active.Base, added)
	assert.NoFileExists(t, stage)
	require.Equal(t, active.Next, follower.EndOffset())
	for _, off := range []uint64{active.Base, active.Next - 1} {
		want, err := leader.Read(off, nil)
		require.NoError(t, err)
		got, err := follower.Read(off, nil)
		require.NoError(t, err)
		assert.Equal(t, want, got, "offset %d", off)
	}
	_, err = follower.Append([]byte("after the promotion"))
	require.NoError(t, err)

	err = Follow(context.Background(), "http://"+addr, follower, FollowOptions{Name: "main", Logger: quiet})
	require.ErrorIs(t, err, ErrDiverged)
	assert.ErrorContains(t, err, "a follower only imports")

	added, err = Promote(follower)
	require.NoError(t, err)
	assert.Zero(t, added, "nothing staged any more")
}

// TestTLSBodiesAreCountedAsCopies: over TLS there is no sendfile (no kTLS
// here); the bytes are right and counted as copied.
func TestTLSBodiesAreCountedAsCopies(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	defer l.Close()
	appendBatches(t, l, 300)
	ts := httptest.NewTLSServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{AllowRemote: true}))
	defer ts.Close()
	resp, err := ts.Client().Get(ts.URL + "/v1/logs/main/segments/0")
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(t, err)
	want, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%020d.seg", 0)))
	require.NoError(t, err)
	assert.Equal(t, want, b)
	// The handler counts once its copy returns, which may be just after
	// the client has read the last byte.
	waitFor(t, "the export to be counted", func() bool { return l.Stats().ExportCopiedBytes == int64(len(want)) })
	assert.Zero(t, l.Stats().ExportSendfileBytes)
}

// TestFollowerSplicesSegments runs a catch-up under strace (when
// installed): the sealed segments' bytes reach the follower's files by
// splice(2), not through user space.
func TestFollowerSplicesSegments(t *testing.T) {
	if stracetest.InChild(t) {
		_, follower, _, stop := caughtUp(t)
		stop()
		var n, k int64
		for _, s := range follower.Segments() {
			if s.Sealed {
				n, k = n+s.Bytes, k+1
			}
		}
		stracetest.Report("imported", n)
		stracetest.Report("segments", k)
		return
	}
	out, calls := stracetest.Run(t, "splice")
	spliced := stracetest.Sum(calls) // socket to pipe, then pipe to file: every byte twice
	want, segs := stracetest.Reported(t, out, "imported"), stracetest.Reported(t, out, "segments")
	t.Logf("%d splice calls moved %d bytes (both legs) for %d bytes in %d segments", len(calls), spliced, want, segs)
	// Each leg moves every byte but those read in with the response
	// headers (at most a 4 KiB buffer per segment).
	assert.GreaterOrEqual(t, spliced/2, want-4096*segs, "the imported bytes went through splice")
}

// TestRateLimitedExportIsWhole: a rate-limited body goes out in paced
// sendfile chunks and still arrives whole.
func TestRateLimitedExportIsWhole(t *testing.T) {
	dir := t.TempDir()
	l := openLog(t, dir)
	defer l.Close()
	appendBatches(t, l, 300)
	ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{RateLimit: 4 << 20}))
	defer ts.Close()
	resp, b := getBody(t, ts.URL+"/v1/logs/main/segments/0", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	want, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("%020d.seg", 0)))
	require.NoError(t, err)
	assert.Equal(t, want, b)
}

// TestSlowlorisIsCutOff: a client that never finishes its headers is
// closed by the header timeout while normal requests keep being served.
func TestSlowlorisIsCutOff(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 10)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{HeaderTimeout: 200 * time.Millisecond}).HTTPServer("")
	go hs.Serve(ln)
	defer hs.Close()
	slow, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer slow.Close()
	_, err = slow.Write([]byte("GET /v1/logs HTTP/1.1\r\nHost: x\r\n")) // and never the rest
	require.NoError(t, err)
	resp, _ := getBody(t, "http://"+ln.Addr().String()+"/v1/logs", nil)
	assert.Equal(t, http.StatusOK, resp.StatusCode, "served meanwhile")
	require.NoError(t, slow.SetReadDeadline(time.Now().Add(10*time.Second)))
	b, err := io.ReadAll(slow) // the server answers 408 or just closes
	require.NoError(t, err, "closed by the server, not by our deadline")
	assert.NotContains(t, string(b), "200 OK")
}

// TestWrongTokenServesNothing: without the right token no segment byte
// leaves the server.
func TestWrongTokenServesNothing(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 300)
	ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{Token: "right"}))
	defer ts.Close()
	for _, h := range []http.Header{nil, {"Authorization": {"Bearer wrong"}}, {"Authorization": {"right"}}} {
		resp, b := getBody(t, ts.URL+"/v1/logs/main/segments/0", h)
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		assert.NotContains(t, string(b), "segstore\x01", "no segment bytes")
	}
	assert.Zero(t, l.Stats().ExportSendfileBytes+l.Stats().ExportCopiedBytes)
}

// tamper flips one byte of every segment body it passes.
type tamper struct{ http.ResponseWriter }

func (w tamper) Write(b []byte) (int, error) {
	if len(b) > 5000 {
		b = bytes.Clone(b)
		b[5000] ^= 1
	}
	return w.ResponseWriter.Write(b)
}

// TestTamperedSegmentIsRejected: a segment changed in transit is refused
// by the follower's import; nothing of it becomes visible.
func TestTamperedSegmentIsRejected(t *testing.T) {
	leader := openLog(t, t.TempDir())
	defer leader.Close()
	appendBatches(t, leader, 300)
	require.NoError(t, leader.Roll())
	srv := NewServer(map[string]*engine.Log{"main": leader}, ServerOptions{})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/segments/") {
			w = tamper{w} // hides ReadFrom: the body is written in slices
		}
		srv.ServeHTTP(w, r)
	}))
	defer ts.Close()
	followerDir := t.TempDir()
	follower := openLog(t, followerDir)
	defer follower.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var failures int
	err := Follow(ctx, ts.URL, follower, FollowOptions{Name: "main", Logger: quiet, MaxBackoff: 50 * time.Millisecond,
		Progress: func(s FollowStats) { failures = s.Failures }})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Positive(t, failures, "every attempt refused")
	assert.Zero(t, follower.EndOffset(), "nothing imported")
	left, _ := filepath.Glob(filepath.Join(followerDir, "*.tmp"))
	assert.Empty(t, left)
}

// TestSegmentEndpointUsesSendfile serves a segment under strace (when
// installed) and counts what sendfile(2) moved.
func TestSegmentEndpointUsesSendfile(t *testing.T) {
	if stracetest.InChild(t) {
		l := openLog(t, t.TempDir())
		defer l.Close()
		appendBatches(t, l, 300)
		ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{}))
		defer ts.Close()
		_, b := getBody(t, ts.URL+"/v1/logs/main/segments/0", nil)
		stracetest.Report("served", int64(len(b)))
		return
	}
	out, calls := stracetest.Run(t, "sendfile")
	want, moved := stracetest.Reported(t, out, "served"), stracetest.Sum(calls)
	t.Logf("sendfile moved %d of the %d bytes served", moved, want)
	// net/http writes the first 512 bytes itself (it sniffs them before
	// the headers go out); sendfile moves the rest.
	assert.GreaterOrEqual(t, moved, want-512)
	assert.Positive(t, want)
}

// TestFollowerStopsOnOverlappingDivergence: the leader cut its log inside
// the segment before the follower's last one and re-appended it so that
// its new segment ends exactly where the follower's log ends: no leader
// segment has the base of the follower's last one, yet they overlap with
// other records. Follow must stop with ErrDiverged, not go on after it.
func TestFollowerStopsOnOverlappingDivergence(t *testing.T) {
	leader := openLog(t, t.TempDir())
	defer leader.Close()
	appendBatches(t, leader, 400)
	require.NoError(t, leader.Roll())
	b := leader.EndOffset()
	appendBatches(t, leader, 2) // a short last sealed segment [b, b+16)
	require.NoError(t, leader.Roll())
	end := leader.EndOffset()
	addr, stopServer := server(t, "127.0.0.1:0", leader)
	defer stopServer()
	follower := openLog(t, t.TempDir())
	defer follower.Close()
	stop := follow("http://"+addr, follower)
	waitFor(t, "the follower to catch up", func() bool { return follower.EndOffset() == end })
	require.ErrorIs(t, stop(), context.Canceled)

	require.NoError(t, leader.TruncateBack(b-3))
	batch := make([][]byte, end-(b-3))
	for i := range batch {
		batch[i] = []byte("rewritten")
	}
	_, err := leader.Append(batch...)
	require.NoError(t, err)
	require.NoError(t, leader.Roll())
	segs := leader.Segments()
	last := segs[len(segs)-2]
	require.Less(t, last.Base, b, "the leader's segment starts before the follower's last one")
	require.Equal(t, end, last.Next, "and ends where the follower's log ends")
	appendBatches(t, leader, 3)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = Follow(ctx, "http://"+addr, follower, FollowOptions{Name: "main", Logger: quiet})
	require.ErrorIs(t, err, ErrDiverged)
	assert.ErrorContains(t, err, "differs from the follower's")
	assert.Equal(t, end, follower.EndOffset(), "nothing of the diverged leader was imported")
}

func TestDialAddr(t *testing.T) {
	for raw, want := range map[string]string{
		"http://leader.example":       "leader.example:80",
		"http://leader.example:7070":  "leader.example:7070",
		"http://127.0.0.1/":           "127.0.0.1:80",
		"http://[::1]":                "[::1]:80",
		"http://[::1]:8080/prefix/v1": "[::1]:8080",
	} {
		u, err := url.Parse(raw)
		require.NoError(t, err)
		assert.Equal(t, want, dialAddr(u), raw)
	}
}
