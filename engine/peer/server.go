// Package peer serves segstore logs to peers over HTTP (segments by
// sendfile, a long-polling tail of the active segment, Prometheus metrics)
// and replicates them from such a server into a follower log whose
// sealed segments are byte-identical to the leader's.
package peer

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Token: clients must send "Authorization: Bearer <Token>" (compared in
	// constant time). Without a token only loopback clients are served,
	// unless AllowRemote is set, and only requests naming a loopback host
	// (localhost, a loopback address such as 127.0.0.1 or [::1], any port)
	// or one of AllowedHosts: a web page that rebinds its own DNS name to
	// this machine cannot read the logs through a browser. With
	// AllowRemote any IP address is accepted as a host too (a page cannot
	// choose an address as its origin).
	Token       string
	AllowRemote bool
	// AllowedHosts are more host names (without a port, compared without
	// regard to case) that requests may name when there is no token.
	AllowedHosts []string
	// MaxExports bounds the segment and tail bodies being sent at once;
	// more get 503 with Retry-After. A waiting tail poll holds none.
	// Default 64.
	MaxExports int
	// MaxWaiters bounds the tail polls waiting for new records at once;
	// more get 503 with Retry-After. Default 1024.
	MaxWaiters int
	// MaxConns bounds the connections an HTTPServer keeps open. A new
	// connection past it closes the longest-idle keep-alive connection,
	// or is closed itself if none is idle (those reading a request are
	// cut within HeaderTimeout, bodies within WriteTimeout, polls are
	// bounded by MaxWaiters). Default 4096.
	MaxConns int
	// RateLimit, if positive, bounds each response's body to this many
	// bytes per second (sent in sendfile chunks of a tenth of a second's
	// worth, each paced to the rate).
	RateLimit int64
	// MaxWait bounds a tail request's long poll. Default 30s.
	MaxWait time.Duration
	// WriteTimeout: every write of a response must go out within it.
	// Bodies are sent in sendfile chunks of at most 1 MiB, each under a
	// deadline this far ahead, so a client that stops reading is cut off
	// (and its export slot freed) within WriteTimeout, and one reading
	// slower than 1 MiB per WriteTimeout is too. Default 30s.
	WriteTimeout time.Duration
	// Registry receives the metrics served at /metrics, with the Go
	// runtime and process collectors. Default: a new one.
	Registry *prometheus.Registry
	// HeaderTimeout: HTTPServer's connections must send each request
	// whole, headers and any body, within it (against slowloris clients).
	// Requests with a body are refused at once. Default 10s.
	HeaderTimeout time.Duration
}

// Server is an http.Handler serving named logs:
//
//	GET /v1/logs                              names and bounds
//	GET /v1/logs/{name}/segments              the segments, as a JSON array
//	GET /v1/logs/{name}/segments/{base}       a segment file (Range, ETag), by sendfile
//	GET /v1/logs/{name}/tail?base=B&pos=P&wait=10s
//	                                          the bytes of segment B from P up to its durable
//	                                          end, waiting up to wait for new ones (204 if none)
//	GET /metrics                              Prometheus metrics
type Server struct {
	logs    map[string]*engine.Log
	opts    ServerOptions
	mux     *http.ServeMux
	exports chan struct{} // a slot per body being sent
	waiters chan struct{} // a slot per waiting tail poll
	m       metrics
	// pause waits d, or until ctx is done, and now tells the time: the
	// rate limiter's pacing (a test replaces both with a clock of its own).
	pause func(ctx context.Context, d time.Duration) error
	now   func() time.Time
}

type metrics struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	cut      prometheus.Counter
	// refusedConns counts connections closed for MaxConns; conns are
	// those open (of HTTPServer's servers).
	refusedConns prometheus.Counter
	conns        prometheus.Gauge
	active       prometheus.Gauge
	waiters      prometheus.Gauge
}

// codeClientGone labels requests whose client went away before it was
// answered (nginx's "client closed request"): not a server error.
const codeClientGone = "499"

// chunkSize is the most a body sends under one write deadline.
const chunkSize = 1 << 20

// NewServer returns a server for logs, by name. The logs stay the
// caller's to close (after the server stops). Each log is served under
// LogName(name), in URLs, listings, metrics and errors alike; names must
// differ in that form (if two do not, the one whose name is already valid
// UTF-8 is served, else the one with the lesser name).
func NewServer(logs map[string]*engine.Log, opts ServerOptions) *Server {
	if opts.MaxExports <= 0 {
		opts.MaxExports = 64
	}
	if opts.MaxWaiters <= 0 {
		opts.MaxWaiters = 1024
	}
	if opts.MaxConns <= 0 {
		opts.MaxConns = 4096
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 30 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 30 * time.Second
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.HeaderTimeout <= 0 {
		opts.HeaderTimeout = 10 * time.Second
	}
	served := make(map[string]*engine.Log, len(logs))
	names := make(map[string]string, len(logs)) // served name: the name it is for
	for name, l := range logs {
		sn := LogName(name)
		if prev, dup := names[sn]; dup && (prev == sn || (name != sn && prev < name)) {
			continue
		}
		served[sn], names[sn] = l, name
	}
	s := &Server{logs: served, opts: opts, mux: http.NewServeMux(), exports: make(chan struct{}, opts.MaxExports),
		waiters: make(chan struct{}, opts.MaxWaiters), pause: sleepCtx, now: time.Now}
	s.m = metrics{
		requests:     prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segstore_peer_requests_total", Help: "HTTP requests by endpoint and status code (" + codeClientGone + ": the client went away before the answer)."}, []string{"endpoint", "code"}),
		bytes:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segstore_peer_sent_bytes_total", Help: "Segment bytes sent, by sendfile or by a copy (TLS)."}, []string{"path"}),
		cut:          prometheus.NewCounter(prometheus.CounterOpts{Name: "segstore_peer_cut_responses_total", Help: "Bodies cut off before their end: the client stopped reading for the write timeout, or went away."}),
		refusedConns: prometheus.NewCounter(prometheus.CounterOpts{Name: "segstore_peer_closed_connections_total", Help: "Connections closed because the server held MaxConns: the longest-idle one, or the new one if none was idle."}),
		conns:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "segstore_peer_connections", Help: "Connections open (at most MaxConns)."}),
		active:       prometheus.NewGauge(prometheus.GaugeOpts{Name: "segstore_peer_active_exports", Help: "Segment and tail bodies being sent."}),
		waiters:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "segstore_peer_tail_waiters", Help: "Tail requests waiting for new durable records."}),
	}
	opts.Registry.MustRegister(s.m.requests, s.m.bytes, s.m.cut, s.m.refusedConns, s.m.conns, s.m.active, s.m.waiters, &logCollector{logs: served})
	for _, c := range []prometheus.Collector{collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		_ = opts.Registry.Register(c) // refused only if a caller's registry has these metrics already
	}
	s.handle("GET /v1/logs", "logs", s.listLogs)
	s.handle("GET /v1/logs/{name}/segments", "segments", s.listSegments)
	s.handle("GET /v1/logs/{name}/segments/{base}", "segment", s.segment)
	s.handle("GET /v1/logs/{name}/tail", "tail", s.tail)
	// ContinueOnError: a collector's failure costs its own metrics, not the
	// scrape, and its error (which may carry a recovered panic's stack)
	// never goes to the client.
	metricsHandler := promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
	s.handle("GET /metrics", "metrics", func(w *statusWriter, r *http.Request) error {
		metricsHandler.ServeHTTP(w, r)
		return nil
	})
	return s
}

// LogName is the form of a log's name that a Server serves it under:
// name itself if it is valid UTF-8 (Prometheus label values and JSON
// strings must be), else name with each byte that is not part of a valid
// UTF-8 sequence written as \xNN (a directory named "caf\xe9" in
// Latin-1 is served as the log `caf\xe9`).
func LogName(name string) string {
	if utf8.ValidString(name) {
		return name
	}
	var b strings.Builder
	for i := 0; i < len(name); {
		r, n := utf8.DecodeRuneInString(name[i:])
		if r == utf8.RuneError && n == 1 {
			fmt.Fprintf(&b, `\x%02x`, name[i])
		} else {
			b.WriteString(name[i : i+n])
		}
		i += n
	}
	return b.String()
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// errShutdown is the cause of a request's context when its http.Server
// shuts down.
var errShutdown = errors.New("segstore: the server is shutting down")

// HTTPServer returns an http.Server for s on addr with limits against
// slow clients: each request, headers and any body, within HeaderTimeout
// (ReadTimeout and ReadHeaderTimeout), headers of at most 16 KiB, idle
// connections closed after 2 min. Writes get deadlines from WriteTimeout
// (see ServeHTTP). Its Shutdown ends waiting tail polls at once (204:
// nothing new), so it need not wait out their long polls.
func (s *Server) HTTPServer(addr string) *http.Server {
	ctx, cancel := context.WithCancelCause(context.Background())
	conns := &connLimit{max: s.opts.MaxConns, conns: map[net.Conn]connState{}, refused: s.m.refusedConns, open: s.m.conns}
	hs := &http.Server{Addr: addr, Handler: s, ReadHeaderTimeout: s.opts.HeaderTimeout, ReadTimeout: s.opts.HeaderTimeout,
		IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10, BaseContext: func(net.Listener) context.Context { return ctx },
		ConnState: conns.track}
	hs.RegisterOnShutdown(func() { cancel(errShutdown) })
	return hs
}

// connLimit keeps an http.Server's open connections within max (its
// ConnState hook): see ServerOptions.MaxConns.
type connLimit struct {
	max     int
	refused prometheus.Counter
	open    prometheus.Gauge
	mu      sync.Mutex
	conns   map[net.Conn]connState // guarded by mu: every open connection
}

type connState struct {
	state http.ConnState
	since time.Time
}

func (cl *connLimit) track(c net.Conn, state http.ConnState) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	defer func() { cl.open.Set(float64(len(cl.conns))) }()
	switch state {
	case http.StateClosed, http.StateHijacked:
		delete(cl.conns, c)
		return
	case http.StateNew:
		if len(cl.conns) >= cl.max {
			var oldest net.Conn
			for oc, st := range cl.conns {
				if st.state == http.StateIdle && (oldest == nil || st.since.Before(cl.conns[oldest].since)) {
					oldest = oc
				}
			}
			cl.refused.Inc()
			if oldest == nil {
				c.Close() // its StateClosed follows
				return
			}
			oldest.Close()
			delete(cl.conns, oldest)
		}
	}
	cl.conns[c] = connState{state: state, since: time.Now()}
}

// ServeHTTP refuses a request that declares a body (no endpoint takes
// one) at once, closing the connection without reading it, so a client
// that never sends it holds nothing. Any other request gets a write
// deadline WriteTimeout ahead and no read deadline while it is handled:
// its whole request is in, and a read deadline would cancel a long poll.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc := http.NewResponseController(w)
	if r.ContentLength != 0 { // -1: chunked, of unknown length
		_ = rc.SetReadDeadline(time.Now()) // not every writer has deadlines; HTTPServer's do
		w.Header().Set("Connection", "close")
		http.Error(w, "segstore: requests carry no body; this one declares one", http.StatusBadRequest)
		s.m.requests.WithLabelValues("body", strconv.Itoa(http.StatusBadRequest)).Inc()
		return
	}
	_ = rc.SetReadDeadline(time.Time{})
	s.allowWrite(w)
	s.mux.ServeHTTP(w, r)
}

// allowWrite sets w's write deadline WriteTimeout ahead.
func (s *Server) allowWrite(w http.ResponseWriter) {
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout)) // not every writer has one
}

// statusError is an HTTP status other than success with its message: what
// the server answers, or what a follower got from its leader.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &statusError{code: code, msg: fmt.Sprintf(format, args...)}
}

// statusWriter remembers the status code for the metrics, and tells the
// engine whether a copy from a file to it ends in sendfile.
type statusWriter struct {
	http.ResponseWriter
	code int
	tls  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// ReadFrom hands a copy to net/http's own ReadFrom, which uses sendfile
// on a plain TCP connection once the headers (with Content-Length) are out.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
}

// SendsFile implements engine.FileSender: net/http hands the copy to the
// TCP connection, which sends the file in the kernel where the platform
// can (blockdev.SendfileToTCP), unless TLS encrypts it in user space.
func (w *statusWriter) SendsFile() bool { return !w.tls && blockdev.SendfileToTCP() }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) handle(pattern, endpoint string, h func(*statusWriter, *http.Request) error) {
	s.m.requests.WithLabelValues(endpoint, "200") // served at 0 from the first scrape on
	s.mux.HandleFunc(pattern, func(rw http.ResponseWriter, r *http.Request) {
		w := &statusWriter{ResponseWriter: rw, tls: r.TLS != nil}
		err := s.authorize(r)
		if err == nil {
			err = h(w, r)
		}
		code := strconv.Itoa(w.code)
		if err != nil && w.code == 0 { // nothing sent yet: say what went wrong
			var he *statusError
			status := http.StatusInternalServerError
			switch {
			case errors.As(err, &he):
				status = he.code
			case errors.Is(err, engine.ErrOutOfRange):
				status = http.StatusNotFound
			}
			if r.Context().Err() != nil && errors.Is(err, r.Context().Err()) {
				code = codeClientGone // nobody to answer
			} else {
				if status == http.StatusServiceUnavailable {
					w.Header().Set("Retry-After", "1")
				}
				http.Error(w, err.Error(), status)
				code = strconv.Itoa(status)
			}
		}
		s.m.requests.WithLabelValues(endpoint, code).Inc()
	})
}

func (s *Server) authorize(r *http.Request) error {
	if s.opts.Token != "" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.Token)) != 1 {
			return errorf(http.StatusUnauthorized, "segstore: a bearer token is required")
		}
		return nil
	}
	if !s.hostAllowed(r.Host) {
		return errorf(http.StatusMisdirectedRequest, "segstore: no token is configured, so only requests for localhost, a loopback address or an allowed host name are served, not for %q; use one of those, allow the name (ServerOptions.AllowedHosts, segtool serve --allow-host), or set a token", r.Host)
	}
	if s.opts.AllowRemote {
		return nil
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return errorf(http.StatusForbidden, "segstore: no token is configured, so only loopback clients are served")
	}
	return nil
}

// hostAllowed reports whether a request without a token may name
// hostport (its Host header): localhost or a loopback address, any IP
// address with AllowRemote, or one of AllowedHosts; any port.
func (s *Server) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	} else if h, ok := strings.CutPrefix(hostport, "["); ok { // [::1] without a port
		host, _ = strings.CutSuffix(h, "]")
	}
	ip, err := netip.ParseAddr(host)
	if strings.HasPrefix(hostport, "[") && (err != nil || !ip.Is6()) {
		return false // brackets hold an IPv6 address and nothing else
	}
	if err == nil {
		return ip.IsLoopback() || s.opts.AllowRemote
	}
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	if host == "localhost" {
		return true
	}
	for _, h := range s.opts.AllowedHosts {
		if host != "" && strings.EqualFold(host, strings.TrimSuffix(h, ".")) {
			return true
		}
	}
	return false
}

func (s *Server) log(r *http.Request) (*engine.Log, error) {
	name := r.PathValue("name")
	l, ok := s.logs[name]
	if !ok {
		return nil, errorf(http.StatusNotFound, "segstore: no log named %q", name)
	}
	return l, nil
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// LogInfo is an entry of GET /v1/logs.
type LogInfo struct {
	Name     string `json:"name"`
	Start    uint64 `json:"start"`
	End      uint64 `json:"end"` // durable end: offsets below it are served
	Segments int    `json:"segments"`
}

func (s *Server) listLogs(w *statusWriter, _ *http.Request) error {
	out := []LogInfo{}
	for name, l := range s.logs {
		out = append(out, LogInfo{Name: name, Start: l.StartOffset(), End: l.DurableOffset(), Segments: len(l.Segments())})
	}
	return writeJSON(w, out)
}

// SegmentEntry is an entry of GET /v1/logs/{name}/segments.
type SegmentEntry struct {
	Base     uint64  `json:"base"`
	Next     uint64  `json:"next"`
	Last     *uint64 `json:"last"` // null when the segment holds no record
	Size     int64   `json:"size"` // bytes served: the whole file if sealed, else up to the durable end
	Sealed   bool    `json:"sealed"`
	Checksum string  `json:"checksum"` // footer CRC-32C of a sealed segment, "" while active
}

func (s *Server) listSegments(w *statusWriter, r *http.Request) error {
	l, err := s.log(r)
	if err != nil {
		return err
	}
	out := []SegmentEntry{}
	for _, si := range l.Segments() { // no file is opened: lazily trusted footers stay unread
		e := SegmentEntry{Base: si.Base, Next: si.Next, Size: si.ExportSize(), Sealed: si.Sealed}
		if e.Next > e.Base {
			last := e.Next - 1
			e.Last = &last
		}
		if e.Sealed {
			e.Checksum = fmt.Sprintf("%08x", si.FooterCRC)
		}
		out = append(out, e)
		if !e.Sealed {
			// A segment the log rolled past is listed last, as the active
			// one, until its seal (a moment after the roll) is done: a
			// follower takes every segment but the last to be sealed.
			break
		}
	}
	return writeJSON(w, out)
}

// acquireExport takes an export slot for a body, or answers 503; a HEAD
// request sends none and needs none. It is called before anything of the
// answer is written, so a 503 is never preceded by another status line.
func (s *Server) acquireExport(r *http.Request) (release func(), err error) {
	if r.Method == http.MethodHead {
		return func() {}, nil
	}
	select {
	case s.exports <- struct{}{}:
		s.m.active.Inc()
		return func() { <-s.exports; s.m.active.Dec() }, nil
	default:
		return nil, errorf(http.StatusServiceUnavailable, "segstore: %d exports in flight (the server's limit), try again", s.opts.MaxExports)
	}
}

func (s *Server) openView(r *http.Request) (*engine.SegmentView, error) {
	l, err := s.log(r)
	if err != nil {
		return nil, err
	}
	base, err := strconv.ParseUint(r.PathValue("base"), 10, 64)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, "segstore: segment %q is not a base offset", r.PathValue("base"))
	}
	return l.OpenSegment(base)
}

func (s *Server) segment(w *statusWriter, r *http.Request) error {
	v, err := s.openView(r)
	if err != nil {
		return err
	}
	defer v.Close()
	size := v.Size()
	h := w.Header()
	setSegmentHeaders(h, v)
	etag := segmentETag(v)
	if etag != "" {
		h.Set("ETag", etag)
	}
	code, whole := preconditions(r.Header, etag)
	switch code {
	case http.StatusNotModified:
		w.WriteHeader(code)
		return nil
	case http.StatusPreconditionFailed:
		return errorf(code, "segstore: If-Match %q does not match segment %d (ETag %s): it changed since", r.Header.Get("If-Match"), v.Info().Base, etag)
	}
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	rg := r.Header.Get("Range")
	if whole {
		rg = ""
	}
	off, n, partial, err := parseRange(rg, size)
	if err != nil {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		return err
	}
	release, err := s.acquireExport(r)
	if err != nil {
		return err
	}
	defer release()
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, size))
		w.WriteHeader(http.StatusPartialContent)
	}
	return s.send(w, r, v, off, n)
}

// segmentETag is the strong entity tag of a sealed segment's file:
// "base-size-footercrc-segmentid". The footer alone does not identify the
// bytes (it holds the record range, the data end and a sparse index, so a
// file cut back by TruncateBack and refilled with records of the same
// sizes can seal with the same footer); the header's SegmentID, random
// and new for every file the engine writes, tells such files apart. The
// active segment has none (""): its bytes may still be cut back.
func segmentETag(v *engine.SegmentView) string {
	si := v.Info()
	if !si.Sealed {
		return ""
	}
	return fmt.Sprintf(`"%d-%d-%08x-%016x"`, si.Base, v.Size(), si.FooterCRC, si.SegmentID)
}

// preconditions evaluates a GET or HEAD's conditional headers against the
// entity tag of what it asks for ("" for none) as RFC 9110 section 13.2.2
// orders them: 412 if If-Match fails (strong comparison), else 304 if
// If-None-Match matches (weak comparison; "*" matches anything), else 0.
// whole reports that an If-Range failed, so the Range is ignored and the
// whole body sent: If-Range holds only for the same strong entity tag (a
// date never matches: segments are not served with a Last-Modified).
// Dates in If-Modified-Since and If-Unmodified-Since are ignored for the
// same reason. Several header lines count as one comma-separated list.
func preconditions(h http.Header, etag string) (code int, whole bool) {
	if im := h.Values("If-Match"); len(im) > 0 && !etagListMatches(strings.Join(im, ","), etag, true) {
		return http.StatusPreconditionFailed, false
	}
	if inm := h.Values("If-None-Match"); len(inm) > 0 && etagListMatches(strings.Join(inm, ","), etag, false) {
		return http.StatusNotModified, false
	}
	if ir := h.Get("If-Range"); ir != "" && h.Get("Range") != "" {
		tag, rest := scanETag(ir)
		whole = tag == "" || strings.TrimSpace(rest) != "" || !etagMatch(tag, etag, true)
	}
	return 0, whole
}

// etagListMatches reports whether the If-Match or If-None-Match value
// list ("*" or entity tags separated by commas) names etag, comparing
// strongly or weakly. A malformed list matches nothing from where it
// goes wrong.
func etagListMatches(list, etag string, strong bool) bool {
	for {
		list = strings.TrimLeft(list, " \t,")
		if list == "" {
			return false
		}
		if list[0] == '*' {
			return true // the segment exists: "*" matches it
		}
		tag, rest := scanETag(list)
		if tag == "" {
			return false
		}
		if etagMatch(tag, etag, strong) {
			return true
		}
		list = rest
	}
}

// scanETag reads the entity tag (W/"x" or "x") at the start of s and
// returns it and what follows; "" if there is none.
func scanETag(s string) (tag, rest string) {
	s = strings.TrimLeft(s, " \t")
	start := 0
	if strings.HasPrefix(s, "W/") {
		start = 2
	}
	if len(s)-start < 2 || s[start] != '"' {
		return "", ""
	}
	for i := start + 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return s[:i+1], s[i+1:]
		case c == 0x21 || c >= 0x23 && c <= 0x7e || c >= 0x80: // etagc
		default:
			return "", ""
		}
	}
	return "", ""
}

// etagMatch compares entity tags: strongly (neither weak, same opaque
// tag) or weakly (same opaque tag). No tag ("") matches nothing.
func etagMatch(a, b string, strong bool) bool {
	if a == "" || b == "" {
		return false
	}
	if strong {
		return a == b && !strings.HasPrefix(a, "W/")
	}
	return strings.TrimPrefix(a, "W/") == strings.TrimPrefix(b, "W/")
}

func setSegmentHeaders(h http.Header, v *engine.SegmentView) {
	h.Set("Segstore-Base", strconv.FormatUint(v.Info().Base, 10))
	h.Set("Segstore-Next", strconv.FormatUint(v.Info().Next, 10))
	h.Set("Segstore-Sealed", strconv.FormatBool(v.Info().Sealed))
	h.Set("Segstore-Size", strconv.FormatInt(v.Size(), 10))
}

// send writes bytes [off, off+n) of v (nothing for HEAD); the caller
// holds an export slot (acquireExport): by sendfile, in chunks of at most
// chunkSize, each under a write deadline WriteTimeout ahead, so a client
// that stops reading loses its slot within WriteTimeout. With a rate
// limit the chunks hold a tenth of a second's bytes and are paced so the
// body never runs ahead of the rate.
func (s *Server) send(w *statusWriter, r *http.Request, v *engine.SegmentView, off, n int64) error {
	if r.Method == http.MethodHead {
		return nil
	}
	path := "sendfile"
	if w.tls {
		path = "copy"
	}
	chunk, rate := int64(chunkSize), s.opts.RateLimit
	if rate > 0 {
		chunk = min(max(rate/10, 1), chunk)
	}
	start := s.now()
	for sent := int64(0); sent < n; {
		s.allowWrite(w)
		m, err := v.Section(off+sent, min(chunk, n-sent)).WriteTo(w)
		sent += m
		s.m.bytes.WithLabelValues(path).Add(float64(m))
		if err != nil {
			s.m.cut.Inc()
			return err
		}
		if rate > 0 && sent < n {
			// Out now, not when net/http's buffer fills (it holds the
			// first bytes before the headers are written).
			_ = http.NewResponseController(w).Flush()
			due := start.Add(time.Duration(float64(sent) / float64(rate) * float64(time.Second)))
			if err := s.pause(r.Context(), due.Sub(s.now())); err != nil {
				s.m.cut.Inc()
				return err
			}
		}
	}
	return nil
}

// parseRange reads a Range header for a body of size bytes: none is the
// whole body; one "bytes=a-b", "bytes=a-" or "bytes=-n" range is served
// (206); anything else is 416.
func parseRange(header string, size int64) (off, n int64, partial bool, err error) {
	if header == "" {
		return 0, size, false, nil
	}
	bad := errorf(http.StatusRequestedRangeNotSatisfiable, "segstore: range %q of a %d-byte segment: one range within it is served", header, size)
	spec, ok := strings.CutPrefix(header, "bytes=")
	if !ok || strings.Contains(spec, ",") {
		return 0, 0, false, bad
	}
	a, b, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, 0, false, bad
	}
	if a == "" { // the last b bytes
		k, err := strconv.ParseInt(b, 10, 64)
		if err != nil || k <= 0 || size == 0 {
			return 0, 0, false, bad
		}
		k = min(k, size)
		return size - k, k, true, nil
	}
	first, err := strconv.ParseInt(a, 10, 64)
	if err != nil || first < 0 || first >= size {
		return 0, 0, false, bad
	}
	last := size - 1
	if b != "" {
		if last, err = strconv.ParseInt(b, 10, 64); err != nil || last < first {
			return 0, 0, false, bad
		}
		last = min(last, size-1)
	}
	return first, last - first + 1, true, nil
}

// tail serves segment base's bytes from pos up to its durable end (the
// whole file, footer included, once it is sealed), waiting up to wait for
// records to become durable when there are none yet; 204 if none came.
func (s *Server) tail(w *statusWriter, r *http.Request) error {
	l, err := s.log(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	base, err1 := strconv.ParseUint(q.Get("base"), 10, 64)
	pos, err2 := strconv.ParseInt(q.Get("pos"), 10, 64)
	if err := errors.Join(err1, err2); err != nil || pos < 0 {
		return errorf(http.StatusBadRequest, "segstore: tail needs base (a segment's base offset) and pos (a byte position)")
	}
	wait := s.opts.MaxWait
	if q.Has("wait") {
		d, err := time.ParseDuration(q.Get("wait"))
		if err != nil || d < 0 {
			return errorf(http.StatusBadRequest, "segstore: wait %q is not a duration", q.Get("wait"))
		}
		wait = min(d, s.opts.MaxWait)
	}
	v, err := l.OpenSegment(base)
	if err != nil {
		return err
	}
	if v.Size() <= pos && !v.Info().Sealed {
		// Nothing new yet: wait, holding no export slot, for records to
		// become durable or the segment to be sealed or cut.
		end := v.Size()
		v.Close()
		if err := s.waitTail(r.Context(), l, base, end, wait); err != nil {
			return err
		}
		s.allowWrite(w) // the wait may have outlasted the first deadline
		if v, err = l.OpenSegment(base); err != nil {
			return err
		}
	}
	defer v.Close()
	setSegmentHeaders(w.Header(), v)
	if v.Size() < pos {
		return errorf(http.StatusRequestedRangeNotSatisfiable, "segstore: position %d is past segment %d's %d bytes", pos, base, v.Size())
	}
	if v.Size() == pos {
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	release, err := s.acquireExport(r)
	if err != nil {
		return err
	}
	defer release()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(v.Size()-pos, 10))
	return s.send(w, r, v, pos, v.Size()-pos)
}

// waitTail waits up to wait for active segment base of l to change from
// ending at pos, holding a waiter slot (503 if none is free). Running out
// of time, or the server shutting down, is not an error.
func (s *Server) waitTail(ctx context.Context, l *engine.Log, base uint64, pos int64, wait time.Duration) error {
	select {
	case s.waiters <- struct{}{}:
	default:
		return errorf(http.StatusServiceUnavailable, "segstore: %d tail polls waiting (the server's limit), try again", s.opts.MaxWaiters)
	}
	s.m.waiters.Inc()
	defer func() { <-s.waiters; s.m.waiters.Dec() }()
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	err := l.WaitActive(wctx, base, pos)
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(context.Cause(ctx), errShutdown) {
		return nil
	}
	return err
}

// logCollector exports each log's Stats as Prometheus metrics.
type logCollector struct{ logs map[string]*engine.Log }

var (
	descAppends  = prometheus.NewDesc("segstore_appends_total", "Append calls (batches).", []string{"log"}, nil)
	descRecords  = prometheus.NewDesc("segstore_records_total", "Records appended.", []string{"log"}, nil)
	descSyncs    = prometheus.NewDesc("segstore_fsyncs_total", "fdatasyncs of segment files.", []string{"log"}, nil)
	descHits     = prometheus.NewDesc("segstore_cache_hits_total", "Cache hits.", []string{"log"}, nil)
	descMisses   = prometheus.NewDesc("segstore_cache_misses_total", "Cache misses.", []string{"log"}, nil)
	descReads    = prometheus.NewDesc("segstore_point_reads_total", "Point reads (Read calls) that returned a record.", []string{"log"}, nil)
	descReadDev  = prometheus.NewDesc("segstore_point_read_device_bytes_total", "Bytes point reads read from the device; divided by segstore_point_reads_total, a point read's amplification.", []string{"log"}, nil)
	descFresh    = prometheus.NewDesc("segstore_point_read_fresh_hits_total", "Point reads served from the batches appended last, without a device read.", []string{"log"}, nil)
	descRAHits   = prometheus.NewDesc("segstore_point_read_ahead_hits_total", "Point reads served from chunks read ahead of a run of sequential reads.", []string{"log"}, nil)
	descRABytes  = prometheus.NewDesc("segstore_point_read_ahead_bytes_total", "Bytes read ahead from the device for runs of sequential reads (part of segstore_point_read_device_bytes_total).", []string{"log"}, nil)
	descSegments = prometheus.NewDesc("segstore_segments", "Segment files.", []string{"log"}, nil)
	descBytes    = prometheus.NewDesc("segstore_bytes", "Bytes of segment files.", []string{"log"}, nil)
	descEnd      = prometheus.NewDesc("segstore_durable_offset", "Offset below which every record is durable.", []string{"log"}, nil)
	descExported = prometheus.NewDesc("segstore_exported_bytes_total", "Bytes exported from segment views.", []string{"log", "path"}, nil)
	descSyncHist = prometheus.NewDesc("segstore_fsync_seconds", "fdatasync latency of group-commit flushes.", []string{"log"}, nil)
	descBatch2   = prometheus.NewDesc("segstore_flush_appends", "Appends carried by each group-commit flush.", []string{"log"}, nil)
)

func (c *logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAppends, descRecords, descSyncs, descHits, descMisses, descReads, descReadDev, descFresh, descRAHits, descRABytes, descSegments, descBytes, descEnd, descExported, descSyncHist, descBatch2} {
		ch <- d
	}
}

func (c *logCollector) Collect(ch chan<- prometheus.Metric) {
	for name, l := range c.logs {
		st := l.Stats()
		counter := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- orInvalid(d)(prometheus.NewConstMetric(d, prometheus.CounterValue, v, append([]string{name}, labels...)...))
		}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- orInvalid(d)(prometheus.NewConstMetric(d, prometheus.GaugeValue, v, name))
		}
		counter(descAppends, float64(st.Appends))
		counter(descRecords, float64(st.Records))
		counter(descSyncs, float64(st.Syncs))
		counter(descHits, float64(st.Cache.Hits))
		counter(descMisses, float64(st.Cache.Misses))
		counter(descReads, float64(st.PointReads))
		counter(descReadDev, float64(st.ReadDeviceBytes))
		counter(descFresh, float64(st.FreshHits))
		counter(descRAHits, float64(st.ReadAheadHits))
		counter(descRABytes, float64(st.ReadAheadBytes))
		gauge(descSegments, float64(st.Segments))
		gauge(descBytes, float64(st.Bytes))
		gauge(descEnd, float64(st.DurableOffset))
		counter(descExported, float64(st.ExportSendfileBytes), "sendfile")
		counter(descExported, float64(st.ExportCopiedBytes), "copy")
		for d, h := range map[*prometheus.Desc]engine.Histogram{descSyncHist: st.SyncLatency, descBatch2: st.FlushBatch} {
			buckets := make(map[float64]uint64, len(h.Bounds))
			for i, b := range h.Bounds {
				buckets[b] = h.Counts[i]
			}
			ch <- orInvalid(d)(prometheus.NewConstHistogram(d, h.Count, h.Sum, buckets, name))
		}
	}
}

// orInvalid turns a metric that could not be built into an invalid one,
// which costs that metric (the scrape goes on, see ContinueOnError)
// instead of a panic.
func orInvalid(d *prometheus.Desc) func(prometheus.Metric, error) prometheus.Metric {
	return func(m prometheus.Metric, err error) prometheus.Metric {
		if err != nil {
			return prometheus.NewInvalidMetric(d, err)
		}
		return m
	}
}
