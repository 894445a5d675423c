package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/engine"
)

// TestServeAndReplicate runs the serve and replicate commands' functions
// against each other: the copy's segments equal the served store's, and
// inspect on the copy shows the replication.
func TestServeAndReplicate(t *testing.T) {
	dir := smallStore(t)
	end := storeEnd(t, dir)
	sealed, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	require.NoError(t, err)
	sealed = sealed[:len(sealed)-1] // the last is the active segment
	for i := range sealed {
		sealed[i] = filepath.Base(sealed[i])
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url, served := serveStore(ctx, &bytes.Buffer{}, dir, ServeOptions{})
	copyDir := filepath.Join(t.TempDir(), "copy")
	rctx, rcancel := context.WithCancel(ctx)
	replicated := make(chan error, 1)
	go func() {
		replicated <- Replicate(rctx, &bytes.Buffer{}, &bytes.Buffer{}, url, copyDir, ReplicateOptions{Name: "store", Wait: 100 * time.Millisecond})
	}()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if st := readReplication(copyDir); st != nil && st.Applied == end {
			break
		}
		require.True(t, time.Now().Before(deadline), "timed out waiting for the copy")
	}
	rcancel()
	require.NoError(t, <-replicated)

	out, err := runSegtool(t, "inspect", copyDir)
	require.NoError(t, err)
	assert.Contains(t, out, fmt.Sprintf("follower of %s (log \"store\"): readable below %d, received below %d (4096 bytes of the leader's active segment staged), leader at %d, lag 0 records, 3 segments imported", url, end, end, end))
	require.Len(t, sealed, 3)
	for _, name := range sealed {
		a, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		b, err := os.ReadFile(filepath.Join(copyDir, name))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(a, b), name)
	}
	cancel()
	require.NoError(t, <-served)

	// The leader is gone: the copy takes over (its leader's active segment
	// was empty, so only its header was staged).
	out, err = runSegtool(t, "promote", copyDir, "--json")
	require.NoError(t, err)
	var rep PromoteReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	assert.Equal(t, PromoteReport{Dir: copyDir, Added: 0, Start: 0, End: end, Leader: url}, rep)
	assert.NoFileExists(t, filepath.Join(copyDir, replicationFile))
	out, err = runSegtool(t, "inspect", copyDir)
	require.NoError(t, err)
	assert.NotContains(t, out, "follower of")

	_, err = runSegtool(t, "serve")
	assert.Equal(t, 2, ExitCode(err))
	_, err = runSegtool(t, "replicate", "http://127.0.0.1:1")
	assert.Equal(t, 2, ExitCode(err))
}

// TestServeBesideWriter: serve on a store another process writes opens
// it read-only and refreshes it, so a replica follows the writer's new
// records and segments; when the writer rewrites the end, serve stops and
// says to restart.
func TestServeBesideWriter(t *testing.T) {
	dir := smallStore(t)
	writer := openWriter(t, dir) // the other process

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	url, served := serveStore(ctx, &out, dir, ServeOptions{Refresh: 5 * time.Millisecond})
	assert.Contains(t, out.String(), fmt.Sprintf("served read-only, refreshed as its files change (written by process %d)", os.Getpid()), "the writer is this process")
	copyDir := filepath.Join(t.TempDir(), "copy")
	rctx, rcancel := context.WithCancel(ctx)
	replicated := make(chan error, 1)
	go func() {
		replicated <- Replicate(rctx, &bytes.Buffer{}, &bytes.Buffer{}, url, copyDir, ReplicateOptions{Name: "store", Wait: 100 * time.Millisecond})
	}()

	for i := range 300 {
		_, err := writer.Append(fmt.Appendf(nil, "appended beside serve %d", i))
		require.NoError(t, err)
	}
	require.NoError(t, writer.Roll())
	end := writer.EndOffset()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if st := readReplication(copyDir); st != nil && st.Applied == end {
			break
		}
		require.True(t, time.Now().Before(deadline), "timed out waiting for the copy to reach %d", end)
	}
	rcancel()
	require.NoError(t, <-replicated)
	for _, s := range writer.Segments() {
		if !s.Sealed {
			continue
		}
		a, err := os.ReadFile(filepath.Join(dir, s.File))
		require.NoError(t, err)
		b, err := os.ReadFile(filepath.Join(copyDir, s.File))
		require.NoError(t, err)
		require.True(t, bytes.Equal(a, b), s.File)
	}

	require.NoError(t, writer.TruncateBack(end-10))
	select {
	case err := <-served:
		require.ErrorIs(t, err, engine.ErrRewritten)
		assert.ErrorContains(t, err, "restart serve")
	case <-time.After(time.Minute):
		t.Fatal("serve went on after the writer rewrote the log's end")
	}
}

// lineSignal is a writer that closes seen at the first write.
type lineSignal struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	once sync.Once
	seen chan struct{}
}

func (w *lineSignal) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.once.Do(func() { close(w.seen) })
	return w.buf.Write(b)
}

func (w *lineSignal) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// TestReplicateReportsRefusals: replicate reports each failed step on its
// stderr with the leader's URL, and exits non-zero when it never reached
// the leader: one that is not there, and one whose answers are refused.
func TestReplicateReportsRefusals(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gone := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close()) // nothing listens there now
	garbage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "<html>not a segstore server</html>")
	}))
	defer garbage.Close()
	for leader, want := range map[string]string{gone: "connection refused", garbage.URL: "the leader's answer was refused"} {
		errOut := &lineSignal{seen: make(chan struct{})}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- Replicate(ctx, &bytes.Buffer{}, errOut, leader, filepath.Join(t.TempDir(), "copy"), ReplicateOptions{Name: "store"})
		}()
		select {
		case <-errOut.seen:
		case <-time.After(time.Minute):
			t.Fatalf("%s: no failure reported on stderr", leader)
		}
		cancel()
		err := <-done
		require.Error(t, err, leader)
		assert.Equal(t, ExitEnvironment, ExitCode(err))
		assert.ErrorContains(t, err, "never reached the leader "+leader)
		assert.Contains(t, errOut.String(), "leader="+leader)
		assert.Contains(t, errOut.String(), want)
	}
}

// TestReplicateTakesTheFollowersOptions: a leader's segments written with
// larger writes than the follower's options allow (64 KiB against 16 KiB)
// are refused, with the option to raise on stderr; given it, the same
// leader replicates.
func TestReplicateTakesTheFollowersOptions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.Logger = 256<<10, 64<<10, quietLogger
	l, err := engine.Open(dir, opts)
	require.NoError(t, err)
	for i := 0; len(l.Segments()) < 3; i++ {
		_, err := l.Append([]byte(fmt.Sprintf("record %04d: %s", i, strings.Repeat("ab", 100))))
		require.NoError(t, err)
	}
	require.NoError(t, l.Roll())
	end := l.EndOffset()
	require.NoError(t, l.Close())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url, served := serveStore(ctx, &bytes.Buffer{}, dir, ServeOptions{})
	for _, tc := range []struct {
		maxWrite int
		refused  bool
	}{{16 << 10, true}, {64 << 10, false}} {
		copyDir := filepath.Join(t.TempDir(), "copy")
		errOut := &lineSignal{seen: make(chan struct{})}
		rctx, rcancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() {
			done <- Replicate(rctx, &bytes.Buffer{}, errOut, url, copyDir, ReplicateOptions{Name: "store", Wait: 100 * time.Millisecond, MaxWrite: tc.maxWrite})
		}()
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			st := readReplication(copyDir)
			if tc.refused && strings.Contains(errOut.String(), "give replicate --max-write at least 65536") {
				break
			}
			if !tc.refused && st != nil && st.Applied == end {
				break
			}
			select {
			case err := <-done:
				t.Fatalf("replicate stopped: %v", err)
			default:
			}
			require.True(t, time.Now().Before(deadline), "MaxWrite %d: timed out; stderr: %s", tc.maxWrite, errOut.String())
		}
		rcancel()
		err := <-done
		if tc.refused {
			assert.ErrorContains(t, err, "never reached the leader", "every import was refused")
			assert.NotRegexp(t, `FollowOptions\.|MaxImportSize|open it with|before repairing`, errOut.String(), "the advice in replicate's flags")
			assert.NotRegexp(t, `FollowOptions\.|MaxImportSize|open it with|before repairing`, err.Error())
		} else {
			assert.NoError(t, err)
		}
	}
	cancel()
	require.NoError(t, <-served)
}

// TestServeADirectoryNamedInNotUTF8: serve names a log after its
// directory, whose name may be any bytes: one that is not UTF-8 is served
// as peer.LogName writes it (listing and metrics answer 200), and two
// directories served under one name are refused with a usage error.
func TestServeADirectoryNamedInNotUTF8(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "caf\xe9")
	require.NoError(t, os.Rename(smallStore(t), dir))
	twin := filepath.Join(t.TempDir(), `caf\xe9`)
	require.NoError(t, os.Rename(smallStore(t), twin))
	err := Serve(context.Background(), &bytes.Buffer{}, []string{dir, twin}, ServeOptions{Listen: "127.0.0.1:0"}, nil)
	require.ErrorAs(t, err, new(usageError))
	assert.Contains(t, err.Error(), "rename one")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url, served := serveStore(ctx, &bytes.Buffer{}, dir, ServeOptions{})
	for path, want := range map[string]string{"/v1/logs": `"name":"caf\\xe9"`, "/metrics": `segstore_records_total{log="caf\\xe9"}`} {
		resp, err := http.Get(url + path)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		assert.Equal(t, http.StatusOK, resp.StatusCode, path)
		assert.Contains(t, string(body), want, path)
	}
	cancel()
	require.NoError(t, <-served)
}

// TestServeReadOnlyIsCurrent: a store served read-only beside its writer
// answers each request with every record the writer acknowledged before
// it, without waiting for a refresh: each append, then a listing at once,
// shows it.
func TestServeReadOnlyIsCurrent(t *testing.T) {
	dir := smallStore(t)
	writer := openWriter(t, dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	url, served := serveStore(ctx, io.Discard, dir, ServeOptions{ReadOnly: true, Refresh: time.Hour})
	url += "/v1/logs"
	for i := range 30 {
		_, err := writer.Append(fmt.Appendf(nil, "record %d", i))
		require.NoError(t, err)
		if i%10 == 9 {
			require.NoError(t, writer.Roll()) // and across new segments
		}
		resp, err := http.Get(url)
		require.NoError(t, err)
		var logs []struct{ End uint64 }
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&logs))
		resp.Body.Close()
		require.Len(t, logs, 1)
		require.Equal(t, writer.EndOffset(), logs[0].End, "after append %d", i)
	}
	cancel()
	require.NoError(t, <-served)
}

// serveStore serves dir as Serve does, on a free loopback port, until ctx
// is done: it returns the server's URL and where Serve's result arrives.
func serveStore(ctx context.Context, out io.Writer, dir string, o ServeOptions) (string, <-chan error) {
	addr := make(chan string, 1)
	served := make(chan error, 1)
	o.Listen = "127.0.0.1:0"
	go func() { served <- Serve(ctx, out, []string{dir}, o, func(a string) { addr <- a }) }()
	return "http://" + <-addr, served
}
