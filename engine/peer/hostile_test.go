package peer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// A hostile leader: a real leader's Server behind a handler that answers
// the first tricks requests to one endpoint its own way. The sweep below
// runs one follower per trick and checks that each is refused with the
// right error, reported, bounded in what it reads and stages, writes
// nothing outside the follower's directory, and that the follower keeps
// going and ends byte-identical once the leader answers honestly again.

const (
	tricks = 2 // hostile answers per case, so a refusal is also retried
	// endless is how much an "endless" answer sends at most: far more than
	// any bound of the follower, so that a follower without one reads it.
	endless = 256 << 20
	// maxSent bounds what one hostile answer may get the follower to take:
	// its largest read bound (the segment list) plus what loopback socket
	// buffers hold when the follower stops reading.
	maxSent = defaultMaxListBytes + 16<<20
)

// fakeLeader is one way of answering a request.
type fakeLeader struct {
	name     string
	endpoint string // "list", "segment" or "tail"
	want     error  // what the follower's failure must match (nil: any error)
	serve    func(a *answer)
}

// late reports whether h's failure shows only once the leader seals the
// segment: damaged tail bytes are staged, and refused by the import.
func (h fakeLeader) late() bool { return h.endpoint == "tail" && errors.Is(h.want, engine.ErrCorrupt) }

// answer is a request the trick answers, with the honest answer at hand.
type answer struct {
	w      http.ResponseWriter
	r      *http.Request
	honest *httptest.ResponseRecorder
	sent   *atomic.Int64 // body and header bytes the trick got written
	done   <-chan struct{}
}

// raw takes over the connection, writes head, then up to n bytes of body
// (from the honest body, repeated, or its pattern if there is none), and
// then closes the connection, or stalls until the follower gives up (or
// the case ends) when stall is set.
func (a *answer) raw(head string, body []byte, n int64, stall bool) {
	conn, _, err := http.NewResponseController(a.w).Hijack()
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetWriteBuffer(32 << 10)
	}
	cw := &countingWriter{w: conn, n: a.sent}
	if _, err := io.WriteString(cw, head); err != nil {
		return
	}
	if len(body) == 0 {
		body = []byte("segstore ")
	}
	for n > 0 {
		k, err := cw.Write(body[:min(int64(len(body)), n)])
		n -= int64(k)
		if err != nil {
			return
		}
	}
	if stall {
		select { // the follower closes, or the case ends
		case <-waitClosed(conn):
		case <-a.done:
		}
	}
}

// drip takes over the connection, writes head, then the body a byte at
// a time, each after a pause, until the follower gives up (or the case
// ends).
func (a *answer) drip(head string, body []byte) {
	conn, _, err := http.NewResponseController(a.w).Hijack()
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	cw := &countingWriter{w: conn, n: a.sent}
	if _, err := io.WriteString(cw, head); err != nil {
		return
	}
	for i := 0; i < len(body); i++ {
		select {
		case <-a.done:
			return
		case <-time.After(20 * time.Millisecond):
		}
		if _, err := cw.Write(body[i : i+1]); err != nil {
			return
		}
	}
}

// waitClosed is closed when the peer closes conn (or sends anything).
func waitClosed(conn net.Conn) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		conn.Read(make([]byte, 1))
	}()
	return ch
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// headers renders the honest answer's status line and headers, with
// changes (an empty value drops a header).
func (a *answer) headers(code int, change map[string]string) string {
	h := a.honest.Header().Clone()
	h.Set("Content-Length", strconv.Itoa(a.honest.Body.Len()))
	for k, v := range change {
		if v == "" {
			h.Del(k)
		} else {
			h.Set(k, v)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", code, http.StatusText(code))
	h.Write(&b)
	b.WriteString("Connection: close\r\n\r\n")
	return b.String()
}

// list answers with the honest segment list changed by change.
func (a *answer) list(change func([]SegmentEntry) any) {
	var segs []SegmentEntry
	if err := json.Unmarshal(a.honest.Body.Bytes(), &segs); err != nil {
		panic(err)
	}
	b, _ := json.Marshal(change(segs))
	a.w.Header().Set("Content-Type", "application/json")
	a.sent.Add(int64(len(b)))
	a.w.Write(b)
}

// rawSegment answers with the honest segment file, its header changed by
// change (and checksummed again).
func (a *answer) rawSegment(change func(*wal.FileHeader)) {
	b := bytes.Clone(a.honest.Body.Bytes())
	h, err := wal.DecodeFileHeader(b)
	if err != nil {
		panic(err)
	}
	change(&h)
	wal.EncodeFileHeader(b, h)
	a.raw(a.headers(http.StatusOK, nil), b, int64(len(b)), false)
}

// endlessEntries is a segment list that never ends.
var endlessEntries = bytes.Repeat([]byte(`{"base":0,"next":0,"last":null,"size":4096,"sealed":true,"checksum":"00000000"},`), 1000)

// cutLeaders stop a body (it ends, or stalls) at each cut: its middle,
// and with SEGSTORE_LONG=1 also its first bytes, a block boundary and
// before its last byte.
func cutLeaders() []fakeLeader {
	type cut struct {
		where string
		at    func(n int) int
	}
	cuts := []cut{{"mid-body", func(n int) int { return n / 2 }}}
	if testutil.Long() {
		cuts = append(cuts, cut{"at byte 0", func(int) int { return 0 }}, cut{"at byte 1", func(n int) int { return min(1, n) }},
			cut{"at byte 4096", func(n int) int { return min(4096, n/2) }}, cut{"before the last byte", func(n int) int { return max(n-1, 0) }})
	}
	var leaders []fakeLeader
	for _, c := range cuts {
		body := func(a *answer) ([]byte, int64) { return a.honest.Body.Bytes(), int64(c.at(a.honest.Body.Len())) }
		leaders = append(leaders,
			fakeLeader{"segment/stalls " + c.where, "segment", ErrStalled, func(a *answer) {
				b, n := body(a)
				a.raw(a.headers(http.StatusOK, nil), b, n, true)
			}},
			fakeLeader{"segment/body ends " + c.where, "segment", engine.ErrImport, func(a *answer) {
				b, n := body(a)
				a.raw(a.headers(http.StatusOK, nil), b, n, false)
			}},
			fakeLeader{"tail/stalls " + c.where, "tail", ErrStalled, func(a *answer) {
				b, n := body(a)
				a.raw(a.headers(a.honest.Code, nil), b, n, true)
			}},
			fakeLeader{"tail/body ends " + c.where, "tail", ErrBadAnswer, func(a *answer) {
				b, n := body(a)
				a.raw(a.headers(a.honest.Code, nil), b, n, false)
			}})
	}
	return leaders
}

func hostileLeaders() []fakeLeader {
	ok := http.StatusOK
	half := func(a *answer) int64 { return int64(a.honest.Body.Len() / 2) }
	listed := func(name string, change func([]SegmentEntry) any) fakeLeader {
		return fakeLeader{name: "list/" + name, endpoint: "list", want: ErrBadAnswer, serve: func(a *answer) { a.list(change) }}
	}
	return []fakeLeader{
		// The segment list.
		{"list/headers without end", "list", nil, func(a *answer) { a.raw("HTTP/1.1 200 OK\r\nX-Pad: ", nil, endless, false) }},
		{"list/endless", "list", ErrBadAnswer, func(a *answer) {
			a.raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[", endlessEntries, endless, false)
		}},
		{"list/stalls before its headers", "list", ErrStalled, func(a *answer) { a.raw("", nil, 0, true) }},
		{"list/stalls mid-body", "list", ErrStalled, func(a *answer) { a.raw(a.headers(ok, nil), a.honest.Body.Bytes(), half(a), true) }},
		{"list/drips", "list", ErrStalled, func(a *answer) { a.drip(a.headers(ok, nil), a.honest.Body.Bytes()) }},
		{"list/Content-Length longer than the body", "list", ErrBadAnswer, func(a *answer) {
			a.raw(a.headers(ok, map[string]string{"Content-Length": "1000000"}), a.honest.Body.Bytes(), int64(a.honest.Body.Len()), false)
		}},
		{"list/redirect elsewhere", "list", nil, func(a *answer) {
			http.Redirect(a.w, a.r, "http://127.0.0.1:1/v1/logs/main/segments", http.StatusTemporaryRedirect)
		}},
		listed("not JSON", func([]SegmentEntry) any { return json.RawMessage(`"<html>"`) }),
		listed("empty", func([]SegmentEntry) any { return []SegmentEntry{} }),
		listed("path in a base", func([]SegmentEntry) any { return []map[string]string{{"base": "../../outside", "size": "4096"}} }),
		listed("overlapping bases", func(s []SegmentEntry) any { s[1].Base = s[0].Base + 1; return s }),
		listed("bases going backwards", func(s []SegmentEntry) any { s[0], s[1] = s[1], s[0]; return s }),
		listed("absurd offsets", func(s []SegmentEntry) any {
			s[len(s)-1].Next = math.MaxUint64
			return s
		}),
		listed("ends before it starts", func(s []SegmentEntry) any { s[0].Next = s[0].Base - 1; return s }),
		listed("unsealed in the middle", func(s []SegmentEntry) any { s[0].Sealed = false; return s }),
		listed("segment larger than the follower takes", func(s []SegmentEntry) any { s[0].Size = 1 << 40; return s }),
		listed("segment smaller than a header", func(s []SegmentEntry) any { s[0].Size = 100; return s }),

		// A sealed segment (fetched over the follower's own connection).
		{"segment/headers without end", "segment", ErrBadAnswer, func(a *answer) { a.raw("HTTP/1.1 200 OK\r\nX-Pad: ", nil, endless, false) }},
		{"segment/stalls before its headers", "segment", ErrStalled, func(a *answer) { a.raw("", nil, 0, true) }},
		{"segment/drips", "segment", ErrStalled, func(a *answer) { a.drip(a.headers(ok, nil), a.honest.Body.Bytes()) }},
		{"segment/endless body without Content-Length", "segment", ErrBadAnswer, func(a *answer) {
			a.raw(a.headers(ok, map[string]string{"Content-Length": ""}), a.honest.Body.Bytes(), endless, false)
		}},
		{"segment/Content-Length not the listed size", "segment", ErrBadAnswer, func(a *answer) {
			a.raw(a.headers(ok, map[string]string{"Content-Length": strconv.Itoa(a.honest.Body.Len() + 4096)}), a.honest.Body.Bytes(), endless, false)
		}},
		{"segment/corrupted", "segment", engine.ErrCorrupt, func(a *answer) {
			b := bytes.Clone(a.honest.Body.Bytes())
			b[len(b)/2] ^= 0x40
			a.raw(a.headers(ok, nil), b, int64(len(b)), false)
		}},
		{"segment/another base in its header", "segment", engine.ErrCorrupt, func(a *answer) {
			a.rawSegment(func(h *wal.FileHeader) { h.BaseOffset += 1 << 40 })
		}},
		{"segment/header allowing huge writes", "segment", engine.ErrCorrupt, func(a *answer) {
			a.rawSegment(func(h *wal.FileHeader) { h.MaxWrite = 1 << 31 })
		}},
		{"segment/header damaged", "segment", engine.ErrCorrupt, func(a *answer) {
			b := bytes.Clone(a.honest.Body.Bytes())
			b[30] ^= 1
			a.raw(a.headers(ok, nil), b, int64(len(b)), false)
		}},

		// The tail of the active segment.
		{"tail/endless body without Content-Length", "tail", ErrBadAnswer, func(a *answer) {
			a.raw(a.headers(a.honest.Code, map[string]string{"Content-Length": ""}), a.honest.Body.Bytes(), endless, false)
		}},
		{"tail/claims a TiB", "tail", ErrBadAnswer, func(a *answer) {
			a.raw(a.headers(ok, map[string]string{"Segstore-Size": strconv.Itoa(1 << 40), "Content-Length": strconv.Itoa(1 << 40)}), a.honest.Body.Bytes(), endless, false)
		}},
		{"tail/Content-Length not what the size says", "tail", ErrBadAnswer, func(a *answer) {
			a.raw(a.headers(ok, map[string]string{"Content-Length": strconv.Itoa(a.honest.Body.Len() + 8)}), a.honest.Body.Bytes(), endless, false)
		}},
		{"tail/no segstore headers", "tail", ErrBadAnswer, func(a *answer) {
			a.raw(a.headers(a.honest.Code, map[string]string{"Segstore-Size": "", "Segstore-Sealed": ""}), a.honest.Body.Bytes(), int64(a.honest.Body.Len()), false)
		}},
		{"tail/stalls before its headers", "tail", ErrStalled, func(a *answer) { a.raw("", nil, 0, true) }},
		{"tail/drips", "tail", ErrStalled, func(a *answer) { a.drip(a.headers(a.honest.Code, nil), a.honest.Body.Bytes()) }},
		{"tail/corrupted", "tail", engine.ErrCorrupt, func(a *answer) {
			b := bytes.Clone(a.honest.Body.Bytes())
			if len(b) > 0 {
				b[len(b)/2] ^= 0x40
			}
			a.raw(a.headers(a.honest.Code, nil), b, int64(len(b)), false)
		}},
	}
}

// failures collects the warnings a follower logs for its failed steps.
type failures struct {
	mu     sync.Mutex
	errs   []error
	leader []string
}

func (f *failures) Enabled(context.Context, slog.Level) bool { return true }
func (f *failures) WithAttrs([]slog.Attr) slog.Handler       { return f }
func (f *failures) WithGroup(string) slog.Handler            { return f }
func (f *failures) Handle(_ context.Context, r slog.Record) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "err":
			if err, ok := a.Value.Any().(error); ok {
				f.errs = append(f.errs, err)
			}
		case "leader":
			f.leader = append(f.leader, a.Value.String())
		}
		return true
	})
	return nil
}

// match reports whether a logged failure matches want (any, if nil).
func (f *failures) match(want error) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, err := range f.errs {
		if want == nil || errors.Is(err, want) {
			return true
		}
	}
	return false
}

// TestHostileLeaders is the follower's half of the hostile-peers sweep:
// every trick above, against a fresh follower each.
func TestHostileLeaders(t *testing.T) {
	leader := openLog(t, t.TempDir())
	defer leader.Close()
	appendBatches(t, leader, 400)
	require.NoError(t, leader.Roll())
	srv := NewServer(map[string]*engine.Log{"main": leader}, ServerOptions{MaxWait: time.Second})

	type sweepCase struct {
		fakeLeader
		client bool // the follower is given an http.Client
	}
	var cases []sweepCase
	for _, h := range append(hostileLeaders(), cutLeaders()...) {
		cases = append(cases, sweepCase{h, false})
		if h.endpoint == "segment" {
			// Again through a client of the caller's (no connection of
			// the follower's own: net/http reads the body).
			h.name += " (client)"
			if strings.Contains(h.name, "headers without end") {
				h.want = nil // refused by net/http's own header limit
			}
			cases = append(cases, sweepCase{h, true})
		}
	}
	for _, h := range cases {
		t.Run(h.name, func(t *testing.T) {
			appendBatches(t, leader, 30) // records in the active segment, to be tailed
			var served atomic.Int64
			var honestAgain atomic.Bool
			var sentMu sync.Mutex
			var sent []*atomic.Int64
			done := make(chan struct{})
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				endpoint := "list"
				switch {
				case strings.HasSuffix(r.URL.Path, "/tail"):
					endpoint = "tail"
				case strings.Contains(r.URL.Path, "/segments/"):
					endpoint = "segment"
				}
				if endpoint != h.endpoint || honestAgain.Load() {
					srv.ServeHTTP(w, r)
					return
				}
				served.Add(1)
				honest := httptest.NewRecorder()
				srv.ServeHTTP(honest, r)
				n := new(atomic.Int64)
				sentMu.Lock()
				sent = append(sent, n)
				sentMu.Unlock()
				h.serve(&answer{w: w, r: r, honest: honest, sent: n, done: done})
			}))
			defer ts.Close()
			defer close(done) // before ts.Close: stalled answers return

			root := t.TempDir()
			dir := filepath.Join(root, "store")
			opts := engine.DefaultOptions()
			opts.SegmentSize, opts.MaxWrite, opts.Logger = 256<<10, 64<<10, quiet
			follower, err := engine.Open(dir, opts)
			require.NoError(t, err)
			defer follower.Close()
			limit := follower.MaxImportSize()

			fails := &failures{}
			var maxStaged, failed atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			stopped := make(chan error, 1)
			var client *http.Client
			if h.client {
				client = ts.Client()
			}
			go func() {
				stopped <- Follow(ctx, ts.URL, follower, FollowOptions{Name: "main", Client: client, Wait: 50 * time.Millisecond,
					ReadTimeout: 500 * time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond,
					Logger: slog.New(fails),
					Progress: func(s FollowStats) {
						if s.Staged > maxStaged.Load() {
							maxStaged.Store(s.Staged)
						}
						failed.Store(int64(s.Failures))
					}})
			}()
			// Hostile answers until the follower has refused one for the
			// reason the case is about (on a loaded machine a slow answer
			// may first be taken for a stall), or, for damage that shows
			// only when the segment is sealed, until a few were served.
			waitFor(t, "the hostile answers to be refused", func() bool {
				return served.Load() >= tricks && (h.late() || fails.match(h.want))
			})
			honestAgain.Store(true)
			// The leader moves on: the follower must follow it to the end.
			appendBatches(t, leader, 5)
			require.NoError(t, leader.Roll())
			end := leader.EndOffset()
			waitFor(t, "the follower to catch up after the hostile answers", func() bool { return follower.EndOffset() == end })
			cancel()
			require.ErrorIs(t, <-stopped, context.Canceled)

			assert.Positive(t, failed.Load(), "the refusals are counted")
			assert.True(t, fails.match(h.want), "a failure matches %v", h.want)
			fails.mu.Lock()
			for _, l := range fails.leader {
				assert.Equal(t, ts.URL, l, "each warning names the leader")
			}
			fails.mu.Unlock()

			sentMu.Lock()
			for i, n := range sent {
				assert.LessOrEqual(t, n.Load(), int64(maxSent), "hostile answer %d: the follower stopped reading it", i)
			}
			sentMu.Unlock()
			assert.LessOrEqual(t, maxStaged.Load(), limit, "the stage stays within the follower's segment limit")
			if fi, err := os.Stat(filepath.Join(dir, StageFile)); err == nil {
				assert.LessOrEqual(t, fi.Size(), limit)
			}

			// Nothing outside the store; inside, only a log's own files.
			ents, err := os.ReadDir(root)
			require.NoError(t, err)
			require.Len(t, ents, 1)
			assert.Equal(t, "store", ents[0].Name())
			ents, err = os.ReadDir(dir)
			require.NoError(t, err)
			for _, e := range ents {
				_, isSeg := engine.ParseSegmentName(e.Name())
				assert.True(t, isSeg || e.Name() == StageFile || e.Name() == "MANIFEST" || e.Name() == "LOCK" || e.Name() == "DURABLE",
					"unexpected file %s in the follower's directory", e.Name())
				assert.False(t, e.IsDir(), e.Name())
			}
			for _, s := range leader.Segments() {
				if s.Sealed {
					assert.Equal(t, leaderFile(t, leader, s.File), leaderFile(t, follower, s.File), "segment %s byte for byte", s.File)
				}
			}
		})
	}
}
