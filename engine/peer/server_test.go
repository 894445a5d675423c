package peer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/engine"
)

// metric is the value of the metric name with labels (pairs of name and
// value) in reg; 0 if it is not there.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					found = found || lp.GetName() == labels[i] && lp.GetValue() == labels[i+1]
				}
				if !found {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

// segmentFile is the bytes of l's segment at base as a view exports them.
func segmentFile(t *testing.T, l *engine.Log, base uint64) []byte {
	t.Helper()
	v, err := l.OpenSegment(base)
	require.NoError(t, err)
	defer v.Close()
	b := make([]byte, v.Size())
	_, err = v.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}

// TestHostHeader sweeps the Host header a request names against every
// combination of token, AllowRemote, AllowedHosts and client address:
// without a token only loopback names (and configured ones, and with
// AllowRemote IP addresses) are served, so a page that rebinds its DNS
// name to this machine reads nothing; with one, the token decides.
func TestHostHeader(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 10)
	require.NoError(t, l.Roll())
	const (
		loopback   = "loopback"   // always a name of this machine
		ip         = "ip"         // an address: no page can have it as its origin but this machine's
		configured = "configured" // in AllowedHosts
		hostile    = "hostile"    // any other name: possibly rebound
	)
	hosts := map[string]string{
		"localhost": loopback, "localhost:7070": loopback, "LOCALHOST:1": loopback, "localhost.": loopback, "localhost.:7070": loopback,
		"127.0.0.1": loopback, "127.0.0.1:7070": loopback, "127.9.9.9:1": loopback, "[::1]": loopback, "[::1]:7070": loopback,
		"[::ffff:127.0.0.1]:80": loopback,
		"10.1.2.3:7070":         ip, "10.1.2.3": ip, "[2001:db8::1]:7070": ip, "[2001:db8::1]": ip,
		"segstore.internal:7070": configured, "SEGSTORE.INTERNAL": configured, "segstore.internal.": configured,
		"attacker.example": hostile, "attacker.example:7070": hostile, "localhost.attacker.example": hostile,
		"127.0.0.1.nip.io": hostile, "localhost@attacker.example": hostile, "localhost:7070:1": hostile, "": hostile,
		"[::1].attacker.example": hostile, "segstore.internal.attacker.example": hostile, "xlocalhost": hostile,
		"127.1": hostile, "[localhost]": hostile, "internal": hostile,
	}
	remotes := map[string]bool{"127.0.0.1:5000": true, "[::1]:5000": true, "10.9.9.9:5000": false} // loopback?
	for _, token := range []string{"", "tok"} {
		for _, allowRemote := range []bool{false, true} {
			for _, allowed := range [][]string{nil, {"segstore.internal"}} {
				srv := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{Token: token, AllowRemote: allowRemote, AllowedHosts: allowed})
				for host, class := range hosts {
					for remote, isLoopback := range remotes {
						name := fmt.Sprintf("token=%q remote=%v allowed=%v host=%q from %s", token, allowRemote, allowed, host, remote)
						want := http.StatusOK
						switch {
						case token != "":
						case class == hostile, class == ip && !allowRemote, class == configured && allowed == nil:
							want = http.StatusMisdirectedRequest
						case !isLoopback && !allowRemote:
							want = http.StatusForbidden
						}
						req := httptest.NewRequest(http.MethodGet, "/v1/logs/main/segments/0", nil)
						req.RemoteAddr, req.Host = remote, host
						if token != "" {
							req.Header.Set("Authorization", "Bearer "+token)
						}
						rec := httptest.NewRecorder()
						srv.ServeHTTP(rec, req)
						require.Equal(t, want, rec.Code, name)
						if want != http.StatusOK {
							assert.NotContains(t, rec.Body.String(), "segstore\x01", "%s: no segment bytes", name)
						}
						if want == http.StatusMisdirectedRequest {
							assert.Contains(t, rec.Body.String(), fmt.Sprintf("not for %q", host), name)
							assert.Contains(t, rec.Body.String(), "--allow-host", name)
						}
					}
				}
			}
		}
	}
}

// TestConditionalRequests sweeps If-Match, If-None-Match, If-Range and
// Range (and GET or HEAD) over a sealed segment, which has an entity tag,
// and the active one, which has none: each answer (code, body,
// Content-Range) is what net/http's ServeContent, which follows RFC 9110,
// gives for the same bytes and tag; the body still goes by sendfile.
func TestConditionalRequests(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 20)
	require.NoError(t, l.Roll())
	appendBatches(t, l, 5)
	srv := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{})
	segs := l.Segments()
	require.Len(t, segs, 2)
	require.True(t, segs[0].Sealed)
	require.False(t, segs[1].Sealed)
	date := "Tue, 01 Dec 2026 21:00:00 GMT"
	for _, seg := range segs {
		body := segmentFile(t, l, seg.Base)
		url := fmt.Sprintf("/v1/logs/main/segments/%d", seg.Base)
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, localRequest(http.MethodGet, url))
		require.Equal(t, http.StatusOK, rec.Code)
		etag := rec.Header().Get("ETag")
		require.Equal(t, seg.Sealed, etag != "", "only sealed segments have a tag")
		other := `"0-1-00000000"`
		weak := "W/" + etag
		if etag == "" {
			weak = `W/"x"`
		}
		ifMatch := []string{"", etag, "*", other, weak, other + ", " + etag, other + " ," + weak, "garbage"}
		ifNoneMatch := []string{"", etag, "*", weak, other, other + ", " + weak, "garbage", other + "," + etag}
		ifRange := []string{"", etag, weak, other, date}
		ranges := []string{"", "bytes=0-99", "bytes=-17", "bytes=100-", "bytes=99999999-"}
		n := 0
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			for _, im := range ifMatch {
				for _, inm := range ifNoneMatch {
					for _, ir := range ifRange {
						for _, rg := range ranges {
							req := localRequest(method, url)
							for k, v := range map[string]string{"If-Match": im, "If-None-Match": inm, "If-Range": ir, "Range": rg} {
								if v != "" {
									req.Header.Set(k, v)
								}
							}
							name := fmt.Sprintf("sealed=%v %s If-Match=%s If-None-Match=%s If-Range=%s Range=%s", seg.Sealed, method, im, inm, ir, rg)
							got := httptest.NewRecorder()
							srv.ServeHTTP(got, req)
							want := httptest.NewRecorder()
							if etag != "" {
								want.Header().Set("ETag", etag)
							}
							http.ServeContent(want, req, "", time.Time{}, bytes.NewReader(body))
							require.Equal(t, want.Code, got.Code, name)
							if got.Code == http.StatusOK || got.Code == http.StatusPartialContent {
								require.Equal(t, want.Body.Bytes(), got.Body.Bytes(), name)
							}
							require.Equal(t, want.Header().Get("Content-Range"), got.Header().Get("Content-Range"), name)
							n++
						}
					}
				}
			}
		}
		t.Logf("sealed=%v: %d requests", seg.Sealed, n)
	}
}

// localRequest is a request as a loopback client sends it.
func localRequest(method, url string) *http.Request {
	req := httptest.NewRequest(method, url, nil)
	req.RemoteAddr, req.Host = "127.0.0.1:5000", "localhost:7070"
	return req
}

// TestResumeAfterRewrite: a client resuming a download with If-Range and
// the tag it had gets the whole new file, not the rest of the old one,
// once TruncateBack rewrote the segment; with the current tag it gets
// the range.
func TestResumeAfterRewrite(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 20)
	require.NoError(t, l.Roll())
	ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{}))
	defer ts.Close()
	url := ts.URL + "/v1/logs/main/segments/0"
	resp, old := getBody(t, url, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	etag := resp.Header.Get("ETag")

	require.NoError(t, l.TruncateBack(l.EndOffset()/2))
	appendBatches(t, l, 20)
	require.NoError(t, l.Roll())
	resp, now := getBody(t, url, http.Header{"Range": {"bytes=1000-"}, "If-Range": {etag}})
	require.Equal(t, http.StatusOK, resp.StatusCode, "the tag changed: the whole file")
	require.NotEqual(t, old, now)
	require.Equal(t, segmentFile(t, l, 0), now)
	resp, part := getBody(t, url, http.Header{"Range": {"bytes=1000-"}, "If-Range": {resp.Header.Get("ETag")}})
	require.Equal(t, http.StatusPartialContent, resp.StatusCode)
	require.Equal(t, now[1000:], part)
	resp, _ = getBody(t, url, http.Header{"If-Match": {etag}})
	assert.Equal(t, http.StatusPreconditionFailed, resp.StatusCode)
}

// TestTailWakesOnEveryChange: a tail poll waiting at the active segment's
// end is answered when records become durable, when the segment is sealed
// (the rest of the file, footer included) and when it is cut back (416),
// not when its wait runs out.
func TestTailWakesOnEveryChange(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*engine.Log) error
		code   int
	}{
		{"append", func(l *engine.Log) error { _, err := l.Append([]byte("new")); return err }, http.StatusOK},
		{"seal", func(l *engine.Log) error { return l.Roll() }, http.StatusOK},
		{"truncate", func(l *engine.Log) error { return l.TruncateBack(l.EndOffset() - 3) }, http.StatusRequestedRangeNotSatisfiable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := openLog(t, t.TempDir())
			defer l.Close()
			appendBatches(t, l, 5)
			reg := prometheus.NewRegistry()
			ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{MaxWait: time.Hour, Registry: reg}))
			defer ts.Close()
			active := l.Segments()[0]
			done := make(chan *http.Response, 1)
			go func() {
				resp, _ := getBody(t, fmt.Sprintf("%s/v1/logs/main/tail?base=%d&pos=%d&wait=1h", ts.URL, active.Base, active.ExportSize()), nil)
				done <- resp
			}()
			waitFor(t, "the poll to wait", func() bool { return metric(t, reg, "segstore_peer_tail_waiters") == 1 })
			require.NoError(t, tc.change(l))
			select {
			case resp := <-done:
				assert.Equal(t, tc.code, resp.StatusCode)
			case <-time.After(time.Minute): // a liveness bound: the poll would wait an hour
				t.Fatal("the waiting poll was not woken")
			}
			if tc.name != "seal" {
				return
			}
			// Polls from where the last ended reach the sealed file's end.
			var got []byte
			for pos := active.ExportSize(); ; {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // liveness, as above
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/logs/main/tail?base=%d&pos=%d&wait=1h", ts.URL, active.Base, pos), nil)
				require.NoError(t, err)
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err, "the waiting poll was not woken")
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				cancel()
				require.NoError(t, err)
				got, pos = append(got, b...), pos+int64(len(b))
				if resp.Header.Get("Segstore-Sealed") == "true" {
					assert.Equal(t, segmentFile(t, l, active.Base)[active.ExportSize():], got)
					return
				}
			}
		})
	}
}

// fakeClock is the rate limiter's clock in a test: time moves only when
// the server pauses.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *fakeClock) Pause(_ context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d > 0 {
		c.now = c.now.Add(d)
	}
	return nil
}

// TestRateLimitIsEnforced: for rates from 100 B/s up, a body paced by the
// limiter takes the time its size needs at that rate (on the limiter's
// own clock), whole and by sendfile.
func TestRateLimitIsEnforced(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 100)
	require.NoError(t, l.Roll())
	file := segmentFile(t, l, 0)
	const n = 5000
	for _, rate := range []int64{100, 1000, 4096, 10_000, 40_000, 1 << 20} {
		clock := &fakeClock{now: time.Now()}
		srv := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{RateLimit: rate})
		srv.now, srv.pause = clock.Now, clock.Pause
		ts := httptest.NewServer(srv)
		start := clock.Now()
		resp, b := getBody(t, ts.URL+"/v1/logs/main/segments/0", http.Header{"Range": {fmt.Sprintf("bytes=0-%d", n-1)}})
		ts.Close()
		require.Equal(t, http.StatusPartialContent, resp.StatusCode)
		require.Equal(t, file[:n], b)
		took := clock.Now().Sub(start)
		chunk := min(max(rate/10, 1), n)
		least := time.Duration(float64(n-chunk) / float64(rate) * float64(time.Second)) // the last chunk is not waited for
		assert.GreaterOrEqual(t, took, least, "rate %d B/s", rate)
		assert.LessOrEqual(t, took, time.Duration(float64(n)/float64(rate)*float64(time.Second)), "rate %d B/s", rate)
	}
}

// TestMetricsOfTheProcess: /metrics has the Go runtime and process
// collectors, no lifetime averages, and a tail poll whose client goes
// away is not a server error.
func TestMetricsOfTheProcess(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 5)
	reg := prometheus.NewRegistry()
	ts := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{Registry: reg, MaxWait: time.Hour}))
	defer ts.Close()
	active := l.Segments()[0]
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/v1/logs/main/tail?base=%d&pos=%d", ts.URL, active.Base, active.ExportSize()), nil)
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() {
		_, err := http.DefaultClient.Do(req)
		done <- err
	}()
	waitFor(t, "the poll to wait", func() bool { return metric(t, reg, "segstore_peer_tail_waiters") == 1 })
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	waitFor(t, "the poll to be counted", func() bool {
		return metric(t, reg, "segstore_peer_requests_total", "endpoint", "tail", "code", codeClientGone) == 1
	})
	assert.Zero(t, metric(t, reg, "segstore_peer_requests_total", "endpoint", "tail", "code", "500"))

	_, b := getBody(t, ts.URL+"/metrics", nil)
	for _, m := range []string{"go_goroutines", "go_memstats_heap_alloc_bytes", "process_open_fds", "process_resident_memory_bytes", "segstore_peer_cut_responses_total"} {
		assert.Contains(t, string(b), m)
	}
	for _, m := range []string{"segstore_appends_per_flush", "segstore_fsync_mean_seconds"} {
		assert.NotContains(t, string(b), m)
	}
	// A registry that has the collectors already is fine.
	NewServer(map[string]*engine.Log{"main": l}, ServerOptions{Registry: prometheus.NewRegistry()})
}

// hostileServer is a server for the hostile-client sweep: small limits and
// deadlines, a listener with small socket buffers (so a client that does
// not read blocks the server's writes at once), and a log of several
// sealed segments and an active one.
type hostileServer struct {
	l     *engine.Log
	srv   *Server
	reg   *prometheus.Registry
	addr  string
	opts  ServerOptions
	conns []net.Conn // the attackers'
}

func newHostile(t *testing.T, opts ServerOptions) *hostileServer {
	t.Helper()
	l := openLog(t, t.TempDir())
	t.Cleanup(func() { l.Close() })
	appendBatches(t, l, 600)
	h := &hostileServer{l: l, reg: prometheus.NewRegistry(), opts: opts}
	opts.Registry = h.reg
	h.srv = NewServer(map[string]*engine.Log{"main": l}, opts)
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { setSockBuf(fd, syscall.SO_SNDBUF, 4096) })
	}}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := h.srv.HTTPServer("")
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	h.addr = ln.Addr().String()
	return h
}

// dial connects to the server with a small receive buffer.
func (h *hostileServer) dial(t *testing.T) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { setSockBuf(fd, syscall.SO_RCVBUF, 4096) })
	}}
	c, err := d.Dial("tcp", h.addr)
	require.NoError(t, err)
	h.conns = append(h.conns, c)
	return c
}

// send writes raw request bytes on a new connection.
func (h *hostileServer) send(t *testing.T, raw string) net.Conn {
	t.Helper()
	c := h.dial(t)
	_, err := io.WriteString(c, raw)
	require.NoError(t, err)
	return c
}

// closedByServer reads c to its end: the server closed it (a liveness
// bound of a minute, far past any deadline the server was given). It
// returns what the server sent.
func closedByServer(t *testing.T, c net.Conn) string {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Minute)))
	b, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		require.NoError(t, err, "closed by the server, not by our deadline")
	}
	return string(b)
}

// legit checks that an ordinary client is served: the listing, and a
// sealed segment byte for byte (retrying on 503, which says to).
func (h *hostileServer) legit(t *testing.T) {
	t.Helper()
	base := "http://" + h.addr
	resp, _ := getBody(t, base+"/v1/logs", h.auth())
	require.Equal(t, http.StatusOK, resp.StatusCode)
	want := segmentFile(t, h.l, 0)
	for {
		resp, b := getBody(t, base+"/v1/logs/main/segments/0", h.auth())
		if resp.StatusCode == http.StatusServiceUnavailable {
			require.Equal(t, "1", resp.Header.Get("Retry-After"))
			time.Sleep(10 * time.Millisecond) // a retry loop, not a timing check
			continue
		}
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.True(t, bytes.Equal(want, b), "the segment byte for byte")
		return
	}
}

// auth is the header a legitimate client sends.
func (h *hostileServer) auth() http.Header {
	if h.opts.Token == "" {
		return nil
	}
	return http.Header{"Authorization": {"Bearer " + h.opts.Token}}
}

func (h *hostileServer) activeTail(wait string) string {
	segs := h.l.Segments()
	a := segs[len(segs)-1]
	return fmt.Sprintf("/v1/logs/main/tail?base=%d&pos=%d&wait=%s", a.Base, a.ExportSize(), wait)
}

// attackers is how many hostile clients each attack runs: twice the
// sweep's export limit.
const attackers = 6

// TestHostileClients sweeps clients that try to hold the server: for
// each attack, the server cuts or refuses every attacker within the
// deadlines it was given (asserted by outcome: the server closed the
// connection, the slot is free, the goroutines are gone), serves a
// legitimate client meanwhile, and holds no more than its limits.
func TestHostileClients(t *testing.T) {
	base := ServerOptions{MaxExports: 3, MaxWaiters: attackers + 1, MaxWait: time.Hour, HeaderTimeout: 300 * time.Millisecond,
		WriteTimeout: 2 * time.Second}
	for _, tc := range []struct {
		name   string
		token  string
		attack func(t *testing.T, h *hostileServer)
	}{
		{"slow headers", "", func(t *testing.T, h *hostileServer) {
			var conns []net.Conn
			for range attackers {
				conns = append(conns, h.send(t, "GET /v1/logs HTTP/1.1\r\nHost: localhost\r\n"))
			}
			h.legit(t)
			for _, c := range conns {
				assert.NotContains(t, closedByServer(t, c), "200 OK")
			}
		}},
		{"oversized headers", "", func(t *testing.T, h *hostileServer) {
			for range attackers {
				c := h.dial(t)
				go func() { // the server stops reading: this write may block until it closes
					io.WriteString(c, "GET /v1/logs HTTP/1.1\r\nHost: localhost\r\nX-Big: "+strings.Repeat("a", 4<<20)+"\r\n\r\n")
				}()
				// It answers 431 and closes; the answer may be lost to the
				// reset that closing with unread bytes sends.
				assert.NotContains(t, closedByServer(t, c), "200 OK")
			}
			h.legit(t)
		}},
		{"declared body never sent", "", declaredBodies},
		{"declared body never sent, with a token", "tok", declaredBodies},
		{"idle polls", "", func(t *testing.T, h *hostileServer) {
			var conns []net.Conn
			for range attackers {
				conns = append(conns, h.send(t, "GET "+h.activeTail("1h")+" HTTP/1.1\r\nHost: localhost\r\n\r\n"))
			}
			waitFor(t, "the polls to wait", func() bool { return metric(t, h.reg, "segstore_peer_tail_waiters") == attackers })
			assert.Zero(t, metric(t, h.reg, "segstore_peer_active_exports"), "waiting polls hold no export slot")
			h.legit(t)
			// A legitimate poll still fits; one more is refused.
			legit := make(chan *http.Response, 1)
			go func() {
				resp, _ := getBody(t, "http://"+h.addr+h.activeTail("1h"), nil)
				legit <- resp
			}()
			waitFor(t, "the legitimate poll to wait", func() bool { return metric(t, h.reg, "segstore_peer_tail_waiters") == attackers+1 })
			assert.Contains(t, closedByServer(t, h.send(t, "GET "+h.activeTail("1h")+" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")), "503")
			// The attackers go away: not server errors, and their slots are free.
			for _, c := range conns {
				c.Close()
			}
			waitFor(t, "the polls to end", func() bool { return metric(t, h.reg, "segstore_peer_tail_waiters") == 1 })
			waitFor(t, "the polls to be counted", func() bool {
				return metric(t, h.reg, "segstore_peer_requests_total", "endpoint", "tail", "code", codeClientGone) == attackers
			})
			assert.Zero(t, metric(t, h.reg, "segstore_peer_requests_total", "endpoint", "tail", "code", "500"))
			_, err := h.l.Append([]byte("new"))
			require.NoError(t, err)
			resp := <-legit
			assert.Equal(t, http.StatusOK, resp.StatusCode, "the legitimate poll got the new record")
		}},
		{"clients that never read", "", func(t *testing.T, h *hostileServer) {
			var conns []net.Conn
			for range attackers {
				conns = append(conns, h.send(t, "GET /v1/logs/main/segments/0 HTTP/1.1\r\nHost: localhost\r\n\r\n"))
			}
			waitFor(t, "the exports to block", func() bool {
				return metric(t, h.reg, "segstore_peer_active_exports") == float64(h.opts.MaxExports)
			})
			h.legit(t) // 503 until a stalled export is cut
			waitFor(t, "the stalled exports to be cut", func() bool {
				return metric(t, h.reg, "segstore_peer_cut_responses_total") >= float64(h.opts.MaxExports)
			})
			waitFor(t, "the slots to be free", func() bool { return metric(t, h.reg, "segstore_peer_active_exports") == 0 })
			for _, c := range conns { // refused, or cut off and closed
				require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Minute)))
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				require.NoError(t, err)
				if resp.StatusCode == http.StatusServiceUnavailable {
					continue
				}
				require.Equal(t, http.StatusOK, resp.StatusCode)
				n, err := io.Copy(io.Discard, resp.Body)
				require.ErrorIs(t, err, io.ErrUnexpectedEOF, "cut off and closed by the server, not by our deadline")
				assert.Less(t, n, resp.ContentLength)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := base
			opts.Token = tc.token
			h := newHostile(t, opts)
			goroutines := runtime.NumGoroutine()
			tc.attack(t, h)
			h.legit(t)
			// Once the attackers hang up (some refused ones are idle
			// keep-alive connections), nothing of theirs is left running:
			// the server's listener is.
			for _, c := range h.conns {
				c.Close()
			}
			http.DefaultClient.CloseIdleConnections()
			waitFor(t, "the server's goroutines to end", func() bool { return runtime.NumGoroutine() <= goroutines+2 })
		})
	}
}

// declaredBodies: requests that declare a body (by Content-Length, up to
// a terabyte, or chunked) and never send it are refused at once and
// their connections closed, before any token check would wait for the
// body; the server reads none of it.
func declaredBodies(t *testing.T, h *hostileServer) {
	var conns []net.Conn
	for i := range attackers {
		req := []string{
			"POST /v1/logs HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n",
			"GET /v1/logs/main/segments/0 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1099511627776\r\n\r\n",
			"GET /v1/logs HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n",
			"PUT /nowhere HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10\r\n\r\nabc",
		}[i%4]
		conns = append(conns, h.send(t, req))
	}
	h.legit(t)
	for _, c := range conns {
		got := closedByServer(t, c)
		resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
		require.NoError(t, err, "%q", got)
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	}
	assert.Equal(t, float64(len(conns)), metric(t, h.reg, "segstore_peer_requests_total", "endpoint", "body", "code", "400"))
}

// TestShutdownEndsWaitingPolls: shutting the http.Server down answers
// its waiting tail polls (204) instead of waiting out their long polls.
func TestShutdownEndsWaitingPolls(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 5)
	reg := prometheus.NewRegistry()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	hs := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{MaxWait: time.Hour, Registry: reg}).HTTPServer("")
	go hs.Serve(ln)
	active := l.Segments()[0]
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := getBody(t, fmt.Sprintf("http://%s/v1/logs/main/tail?base=%d&pos=%d&wait=1h", ln.Addr(), active.Base, active.ExportSize()), nil)
		done <- resp
	}()
	waitFor(t, "the poll to wait", func() bool { return metric(t, reg, "segstore_peer_tail_waiters") == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a liveness bound: the poll would wait an hour
	defer cancel()
	require.NoError(t, hs.Shutdown(ctx))
	assert.Equal(t, http.StatusNoContent, (<-done).StatusCode)
}

// TestConnectionLimit: past MaxConns a new connection closes the
// longest-idle one, or, if none is idle, is closed itself; a legitimate
// client is served again once the silent ones are cut by HeaderTimeout.
func TestConnectionLimit(t *testing.T) {
	const limit = 4
	h := newHostile(t, ServerOptions{MaxConns: limit, HeaderTimeout: 300 * time.Millisecond, WriteTimeout: 2 * time.Second})
	var idle []net.Conn
	for range limit { // each asks once and then idles, kept alive
		c := h.send(t, "GET /v1/logs HTTP/1.1\r\nHost: localhost\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		_, err = io.Copy(io.Discard, resp.Body)
		require.NoError(t, err)
		idle = append(idle, c)
	}
	h.legit(t) // its connection closes the longest-idle one
	assert.Equal(t, 1.0, metric(t, h.reg, "segstore_peer_closed_connections_total"))

	http.DefaultClient.CloseIdleConnections()
	waitFor(t, "the legitimate connections to close", func() bool { return metric(t, h.reg, "segstore_peer_connections") == limit-1 })
	var silent []net.Conn
	for range limit { // connections that say nothing take every place
		silent = append(silent, h.dial(t))
	}
	for _, c := range idle {
		closedByServer(t, c) // each made way for the legitimate or a silent one
	}
	waitFor(t, "the silent connections to hold every place", func() bool { return metric(t, h.reg, "segstore_peer_connections") == limit })
	assert.Empty(t, closedByServer(t, h.send(t, "GET /v1/logs HTTP/1.1\r\nHost: localhost\r\n\r\n")), "closed unanswered: no place")
	for _, c := range silent {
		closedByServer(t, c) // cut by the header timeout
	}
	h.legit(t)
}

// rewriteSameShape cuts l's last k batches (TruncateBack) and appends k
// batches of appendBatches' shape (8 records of the same lengths) with
// other contents, then seals the segment: what a raft leader does when
// it overwrites a conflicting suffix with entries of the same sizes. Cut
// inside the last sparse-index interval, the segment seals with a footer
// byte-identical to the old one.
func rewriteSameShape(t *testing.T, l *engine.Log, k int) {
	t.Helper()
	require.NoError(t, l.TruncateBack(l.EndOffset()-uint64(8*k)))
	for range k {
		batch := make([][]byte, 8)
		for i := range batch {
			batch[i] = []byte(fmt.Sprintf("RECORD %08d %s", l.EndOffset()+uint64(i), strings.Repeat("Q", 100)))
		}
		_, err := l.Append(batch...)
		require.NoError(t, err)
	}
	require.NoError(t, l.Roll())
}

// TestETagChangesWhenTheSameShapeIsRewritten: a sealed segment cut back
// and refilled with records of the same sizes has the same footer (so the
// same footer checksum) but other bytes, and its ETag changes: the file
// header's SegmentID is new for the rewritten file. Swept over how many
// batches are rewritten and over each conditional header: If-Range with
// the old tag gets the whole new file (never a splice of two files),
// If-None-Match with it gets the new bytes (not 304), If-Match with it
// gets 412. The tag of unchanged bytes stays the same across a reopen.
func TestETagChangesWhenTheSameShapeIsRewritten(t *testing.T) {
	for _, k := range []int{1, 2, 3} {
		t.Run(fmt.Sprintf("rewrite%d", k), func(t *testing.T) {
			dir := t.TempDir()
			l := openLog(t, dir)
			defer func() { l.Close() }()
			appendBatches(t, l, 20)
			require.NoError(t, l.Roll())
			logs := map[string]*engine.Log{"main": l}
			ts := httptest.NewServer(NewServer(logs, ServerOptions{}))
			defer ts.Close()
			url := ts.URL + "/v1/logs/main/segments/0"
			resp, old := getBody(t, url, nil)
			require.Equal(t, http.StatusOK, resp.StatusCode)
			etag := resp.Header.Get("ETag")
			crc := l.Segments()[0].FooterCRC

			rewriteSameShape(t, l, k)
			now := segmentFile(t, l, 0)
			require.NotEqual(t, old, now, "the segment's bytes changed")
			require.Equal(t, len(old), len(now), "the same shape: the same size")
			// The same shape had the same footer before footers bound the
			// file's SegmentID; the tag must change either way.
			require.NotEqual(t, crc, l.Segments()[0].FooterCRC, "a version 2 footer binds the file's SegmentID")

			half := fmt.Sprintf("bytes=%d-", len(old)-600) // all but the last batch and the footer
			for _, tc := range []struct {
				header http.Header
				code   int
				body   []byte
			}{
				{http.Header{"Range": {half}, "If-Range": {etag}}, http.StatusOK, now},
				{http.Header{"If-None-Match": {etag}}, http.StatusOK, now},
				{http.Header{"If-None-Match": {"W/" + etag}}, http.StatusOK, now},
				{http.Header{"If-Match": {etag}}, http.StatusPreconditionFailed, nil},
				{http.Header{"Range": {half}, "If-Match": {etag}}, http.StatusPreconditionFailed, nil},
			} {
				resp, body := getBody(t, url, tc.header)
				assert.NotEqual(t, etag, resp.Header.Get("ETag"), "%v: a strong ETag changes when the bytes do", tc.header)
				require.Equal(t, tc.code, resp.StatusCode, "%v", tc.header)
				if tc.body != nil {
					assert.Equal(t, tc.body, body, "%v", tc.header)
				}
			}

			resp, _ = getBody(t, url, nil)
			current := resp.Header.Get("ETag")
			require.NoError(t, l.Close())
			l = openLog(t, dir)
			logs["main"] = l
			ts2 := httptest.NewServer(NewServer(map[string]*engine.Log{"main": l}, ServerOptions{}))
			defer ts2.Close()
			resp, _ = getBody(t, ts2.URL+"/v1/logs/main/segments/0", http.Header{"If-None-Match": {current}})
			assert.Equal(t, http.StatusNotModified, resp.StatusCode, "the same file after a reopen keeps its tag")
		})
	}
}

// TestFullSlotsAnswer503BeforeAnyHeader: with every export slot taken, a
// request for a body gets a whole 503 with Retry-After and no range
// headers, whatever it asks for (the whole segment, each form of range,
// a range under a matching If-Range, the tail of the active or of a
// sealed segment), and the metrics count 503s and no bytes; requests
// that need no body slot (HEAD, 304, 416) are answered as usual. Once a
// slot is free each body request gets its status and its bytes.
func TestFullSlotsAnswer503BeforeAnyHeader(t *testing.T) {
	l := openLog(t, t.TempDir())
	defer l.Close()
	appendBatches(t, l, 20)
	require.NoError(t, l.Roll())
	appendBatches(t, l, 2) // the active segment has durable bytes to tail
	active := l.Segments()[1].Base
	reg := prometheus.NewRegistry()
	srv := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{MaxExports: 1, Registry: reg})
	ts := httptest.NewServer(srv)
	defer ts.Close()
	seg := ts.URL + "/v1/logs/main/segments/0"
	resp, file := getBody(t, seg, nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	etag := resp.Header.Get("ETag")
	tail := fmt.Sprintf("%s/v1/logs/main/tail?base=%d&pos=0&wait=0s", ts.URL, active)

	bodies := []struct {
		name   string
		url    string
		header http.Header
		code   int // once a slot is free
		want   []byte
	}{
		{"whole", seg, nil, http.StatusOK, file},
		{"first-last", seg, http.Header{"Range": {"bytes=0-99"}}, http.StatusPartialContent, file[:100]},
		{"from", seg, http.Header{"Range": {"bytes=100-"}}, http.StatusPartialContent, file[100:]},
		{"suffix", seg, http.Header{"Range": {"bytes=-50"}}, http.StatusPartialContent, file[len(file)-50:]},
		{"if-range", seg, http.Header{"Range": {"bytes=10-19"}, "If-Range": {etag}}, http.StatusPartialContent, file[10:20]},
		{"stale-if-range", seg, http.Header{"Range": {"bytes=10-19"}, "If-Range": {`"other"`}}, http.StatusOK, file},
		{"tail-active", tail, nil, http.StatusOK, nil},
		{"tail-sealed-segment", ts.URL + "/v1/logs/main/tail?base=0&pos=100&wait=0s", nil, http.StatusOK, file[100:]},
	}
	noBody := []struct {
		name   string
		method string
		header http.Header
		code   int
	}{
		{"head", http.MethodHead, nil, http.StatusOK},
		{"head-range", http.MethodHead, http.Header{"Range": {"bytes=0-99"}}, http.StatusPartialContent},
		{"not-modified", http.MethodGet, http.Header{"If-None-Match": {etag}}, http.StatusNotModified},
		{"unsatisfiable", http.MethodGet, http.Header{"Range": {fmt.Sprintf("bytes=%d-", len(file))}}, http.StatusRequestedRangeNotSatisfiable},
		{"precondition", http.MethodGet, http.Header{"If-Match": {`"other"`}}, http.StatusPreconditionFailed},
	}

	srv.exports <- struct{}{} // every slot taken
	sent := metric(t, reg, "segstore_peer_sent_bytes_total", "path", "sendfile")
	for _, tc := range bodies {
		endpoint := "segment"
		if strings.Contains(tc.url, "/tail?") {
			endpoint = "tail"
		}
		before := metric(t, reg, "segstore_peer_requests_total", "endpoint", endpoint, "code", "503")
		resp, _ := getBody(t, tc.url, tc.header) // the body must read whole
		assert.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, tc.name)
		assert.Equal(t, "1", resp.Header.Get("Retry-After"), tc.name)
		assert.Empty(t, resp.Header.Get("Content-Range"), tc.name)
		assert.Equal(t, before+1, metric(t, reg, "segstore_peer_requests_total", "endpoint", endpoint, "code", "503"), "%s: counted as a 503", tc.name)
	}
	assert.Equal(t, sent, metric(t, reg, "segstore_peer_sent_bytes_total", "path", "sendfile"), "no body bytes were sent")
	for _, tc := range noBody {
		req, err := http.NewRequest(tc.method, seg, nil)
		require.NoError(t, err)
		maps.Copy(req.Header, tc.header)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err, tc.name)
		assert.Equal(t, tc.code, resp.StatusCode, "%s needs no export slot", tc.name)
	}

	<-srv.exports // a slot is free again
	for _, tc := range bodies {
		resp, body := getBody(t, tc.url, tc.header)
		assert.Equal(t, tc.code, resp.StatusCode, tc.name)
		if tc.want != nil {
			assert.Equal(t, tc.want, body, tc.name)
		} else {
			assert.NotEmpty(t, body, tc.name)
		}
	}
}

// panickyCollector is a collector whose Collect panics, as a caller's
// registry may hold.
type panickyCollector struct{ desc *prometheus.Desc }

func (c panickyCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c panickyCollector) Collect(chan<- prometheus.Metric)    { panic("a collector's bug") }

// TestLogNamesThatAreNotUTF8: a log whose name is not valid UTF-8 (segtool
// serve names logs after directories, which may hold any bytes) is served
// under LogName's form everywhere: the listing, its URLs and the metrics'
// log label; /metrics answers 200 with every log's and the server's own
// metrics. Swept over kinds of invalid bytes (a Latin-1 byte, a lone
// continuation byte, a cut sequence, an encoded surrogate, 0xff) beside
// valid names, and a collision with a valid name that spells the escape.
// A collector that panics costs its own metrics only, and no answer
// carries a stack trace.
func TestLogNamesThatAreNotUTF8(t *testing.T) {
	names := []string{"caf\xe9", "\x80x", "a\xc3", "\xed\xa0\x80", "\xff\xfe", "café", "main", `caf\xe9`}
	logs := map[string]*engine.Log{}
	for _, name := range names {
		l := openLog(t, t.TempDir())
		defer l.Close()
		appendBatches(t, l, 1)
		logs[name] = l
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(panickyCollector{prometheus.NewDesc("broken_metric", "A collector that panics.", nil, nil)})
	ts := httptest.NewServer(NewServer(logs, ServerOptions{Registry: reg}))
	defer ts.Close()

	want := map[string]bool{}
	for _, name := range names {
		sn := LogName(name)
		require.True(t, utf8.ValidString(sn), "%q", sn)
		assert.Equal(t, name == sn, utf8.ValidString(name), "%q: a valid name is served as it is", name)
		want[sn] = true
	}
	require.Len(t, want, len(names)-1, "`caf\\xe9` and caf\\xe9 share a served name")
	assert.Same(t, logs[`caf\xe9`], NewServer(logs, ServerOptions{}).logs[`caf\xe9`], "of two names served alike the valid one is served")

	resp, body := getBody(t, ts.URL+"/metrics", nil) // the first request: the server's metrics are there already
	assert.Equal(t, http.StatusOK, resp.StatusCode, "%.300s", body)
	assert.Contains(t, string(body), "segstore_peer_requests_total")
	assert.NotContains(t, string(body), "goroutine ")
	assert.NotContains(t, string(body), "panic")

	resp, body = getBody(t, ts.URL+"/v1/logs", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var listed []LogInfo
	require.NoError(t, json.Unmarshal(body, &listed))
	got := map[string]bool{}
	for _, li := range listed {
		got[li.Name] = true
		resp, _ := getBody(t, ts.URL+"/v1/logs/"+url.PathEscape(li.Name)+"/segments", nil)
		assert.Equal(t, http.StatusOK, resp.StatusCode, "the listed name %q is the one its URLs take", li.Name)
	}
	assert.Equal(t, want, got)

	mfs, err := reg.Gather()
	require.Error(t, err, "the panicking collector is reported to the registry's caller")
	assert.NotEmpty(t, mfs)
	labels := map[string]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "segstore_records_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				labels[lp.GetValue()] = true
			}
		}
	}
	assert.Equal(t, want, labels, "the log label is the served name")
}
