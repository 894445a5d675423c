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
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/segstore/segstore/engine"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Token: clients must send "Authorization: Bearer <Token>" (compared in
	// constant time). Without a token only loopback clients are served,
	// unless AllowRemote is set.
	Token       string
	AllowRemote bool
	// MaxExports bounds the segment and tail responses in flight; more get
	// 503 with Retry-After. Default 16.
	MaxExports int
	// RateLimit, if positive, bounds each response's body to this many
	// bytes per second (sent in sendfile chunks of a tenth of a second).
	RateLimit int64
	// MaxWait bounds a tail request's long poll. Default 30s.
	MaxWait time.Duration
	// Registry receives the metrics served at /metrics. Default: a new one.
	Registry *prometheus.Registry
	// HeaderTimeout: HTTPServer's connections must send their request
	// headers within it (against slowloris clients). Default 10s.
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
	exports chan struct{}
	m       metrics
}

type metrics struct {
	requests *prometheus.CounterVec
	bytes    *prometheus.CounterVec
	active   prometheus.Gauge
	waiters  prometheus.Gauge
}

// NewServer returns a server for logs, by name. The logs stay the
// caller's to close (after the server stops).
func NewServer(logs map[string]*engine.Log, opts ServerOptions) *Server {
	if opts.MaxExports <= 0 {
		opts.MaxExports = 16
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 30 * time.Second
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.HeaderTimeout <= 0 {
		opts.HeaderTimeout = 10 * time.Second
	}
	s := &Server{logs: logs, opts: opts, mux: http.NewServeMux(), exports: make(chan struct{}, opts.MaxExports)}
	s.m = metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segstore_peer_requests_total", Help: "HTTP requests by endpoint and status code."}, []string{"endpoint", "code"}),
		bytes:    prometheus.NewCounterVec(prometheus.CounterOpts{Name: "segstore_peer_sent_bytes_total", Help: "Segment bytes sent, by sendfile or by a copy (TLS)."}, []string{"path"}),
		active:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "segstore_peer_active_exports", Help: "Segment and tail responses in flight."}),
		waiters:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "segstore_peer_tail_waiters", Help: "Tail requests waiting for new durable records."}),
	}
	opts.Registry.MustRegister(s.m.requests, s.m.bytes, s.m.active, s.m.waiters, &logCollector{logs: logs})
	s.handle("GET /v1/logs", "logs", s.listLogs)
	s.handle("GET /v1/logs/{name}/segments", "segments", s.listSegments)
	s.handle("GET /v1/logs/{name}/segments/{base}", "segment", s.segment)
	s.handle("GET /v1/logs/{name}/tail", "tail", s.tail)
	metricsHandler := promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{})
	s.handle("GET /metrics", "metrics", func(w *statusWriter, r *http.Request) error {
		metricsHandler.ServeHTTP(w, r)
		return nil
	})
	return s
}

// HTTPServer returns an http.Server for s on addr with timeouts against
// slow clients: headers within HeaderTimeout, idle connections closed
// after 2 min. Body writes get a deadline per response, from its size.
func (s *Server) HTTPServer(addr string) *http.Server {
	return &http.Server{Addr: addr, Handler: s, ReadHeaderTimeout: s.opts.HeaderTimeout, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 16 << 10}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// httpError is an error with the status code to answer.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) error {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
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

// SendsFile implements engine.FileSender.
func (w *statusWriter) SendsFile() bool { return !w.tls }

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) handle(pattern, endpoint string, h func(*statusWriter, *http.Request) error) {
	s.mux.HandleFunc(pattern, func(rw http.ResponseWriter, r *http.Request) {
		w := &statusWriter{ResponseWriter: rw, tls: r.TLS != nil}
		err := s.authorize(r)
		if err == nil {
			err = h(w, r)
		}
		if err != nil {
			var he *httpError
			code := http.StatusInternalServerError
			switch {
			case errors.As(err, &he):
				code = he.code
			case errors.Is(err, engine.ErrOutOfRange):
				code = http.StatusNotFound
			}
			if w.code == 0 { // nothing sent yet: say what went wrong
				if code == http.StatusServiceUnavailable {
					w.Header().Set("Retry-After", "1")
				}
				http.Error(w, err.Error(), code)
			}
		}
		s.m.requests.WithLabelValues(endpoint, strconv.Itoa(w.code)).Inc()
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
	if s.opts.AllowRemote {
		return nil
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		return errorf(http.StatusForbidden, "segstore: no token is configured, so only loopback clients are served")
	}
	return nil
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
	}
	return writeJSON(w, out)
}

// acquireExport takes an export slot, or answers 503.
func (s *Server) acquireExport() (release func(), err error) {
	select {
	case s.exports <- struct{}{}:
		s.m.active.Inc()
		return func() { <-s.exports; s.m.active.Dec() }, nil
	default:
		return nil, errorf(http.StatusServiceUnavailable, "segstore: %d exports in flight, try again", s.opts.MaxExports)
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
	release, err := s.acquireExport()
	if err != nil {
		return err
	}
	defer release()
	v, err := s.openView(r)
	if err != nil {
		return err
	}
	defer v.Close()
	size := v.Size()
	h := w.Header()
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Type", "application/octet-stream")
	setSegmentHeaders(h, v)
	if v.Info().Sealed {
		etag := fmt.Sprintf(`"%d-%d-%08x"`, v.Info().Base, size, v.Info().FooterCRC)
		h.Set("ETag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return nil
		}
	}
	off, n, partial, err := parseRange(r.Header.Get("Range"), size)
	if err != nil {
		h.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
		return err
	}
	h.Set("Content-Length", strconv.FormatInt(n, 10))
	if partial {
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", off, off+n-1, size))
		w.WriteHeader(http.StatusPartialContent)
	}
	return s.send(w, v, off, n)
}

func setSegmentHeaders(h http.Header, v *engine.SegmentView) {
	h.Set("Segstore-Base", strconv.FormatUint(v.Info().Base, 10))
	h.Set("Segstore-Next", strconv.FormatUint(v.Info().Next, 10))
	h.Set("Segstore-Sealed", strconv.FormatBool(v.Info().Sealed))
	h.Set("Segstore-Size", strconv.FormatInt(v.Size(), 10))
}

// send writes bytes [off, off+n) of v: by sendfile in one section, or in
// rate-limited chunks, under a write deadline from the size (at least
// 1 MiB/s, plus 30s).
func (s *Server) send(w *statusWriter, v *engine.SegmentView, off, n int64) error {
	deadline := time.Now().Add(30*time.Second + time.Duration(n/(1<<20))*time.Second)
	if s.opts.RateLimit > 0 {
		deadline = deadline.Add(time.Duration(n/s.opts.RateLimit) * time.Second)
	}
	_ = http.NewResponseController(w).SetWriteDeadline(deadline) // not every writer has one
	path := "sendfile"
	if w.tls {
		path = "copy"
	}
	chunk, pause := n, time.Duration(0)
	if s.opts.RateLimit > 0 {
		chunk, pause = max(s.opts.RateLimit/10, 4096), 100*time.Millisecond
	}
	for sent := int64(0); sent < n; {
		start := time.Now()
		m, err := v.Section(off+sent, min(chunk, n-sent)).WriteTo(w)
		sent += m
		s.m.bytes.WithLabelValues(path).Add(float64(m))
		if err != nil {
			return err
		}
		if wait := pause - time.Since(start); wait > 0 && sent < n {
			time.Sleep(wait)
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
	release, err := s.acquireExport()
	if err != nil {
		return err
	}
	defer release()
	v, err := l.OpenSegment(base)
	if err != nil {
		return err
	}
	if v.Size() <= pos && !v.Info().Sealed {
		// Nothing new yet: wait for the next record to be durable.
		next := v.Info().Next
		v.Close()
		s.m.waiters.Inc()
		ctx, cancel := context.WithTimeout(r.Context(), wait)
		err := l.Wait(ctx, next)
		cancel()
		s.m.waiters.Dec()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
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
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(v.Size()-pos, 10))
	return s.send(w, v, pos, v.Size()-pos)
}

// logCollector exports each log's Stats as Prometheus metrics.
type logCollector struct{ logs map[string]*engine.Log }

var (
	descAppends  = prometheus.NewDesc("segstore_appends_total", "Append calls (batches).", []string{"log"}, nil)
	descRecords  = prometheus.NewDesc("segstore_records_total", "Records appended.", []string{"log"}, nil)
	descSyncs    = prometheus.NewDesc("segstore_fsyncs_total", "fdatasyncs of segment files.", []string{"log"}, nil)
	descBatch    = prometheus.NewDesc("segstore_appends_per_flush", "Mean appends per group-commit flush.", []string{"log"}, nil)
	descSyncTime = prometheus.NewDesc("segstore_fsync_mean_seconds", "Mean fdatasync latency.", []string{"log"}, nil)
	descHits     = prometheus.NewDesc("segstore_cache_hits_total", "Cache hits.", []string{"log"}, nil)
	descMisses   = prometheus.NewDesc("segstore_cache_misses_total", "Cache misses.", []string{"log"}, nil)
	descSegments = prometheus.NewDesc("segstore_segments", "Segment files.", []string{"log"}, nil)
	descBytes    = prometheus.NewDesc("segstore_bytes", "Bytes of segment files.", []string{"log"}, nil)
	descEnd      = prometheus.NewDesc("segstore_durable_offset", "Offset below which every record is durable.", []string{"log"}, nil)
	descExported = prometheus.NewDesc("segstore_exported_bytes_total", "Bytes exported from segment views.", []string{"log", "path"}, nil)
	descSyncHist = prometheus.NewDesc("segstore_fsync_seconds", "fdatasync latency of group-commit flushes.", []string{"log"}, nil)
	descBatch2   = prometheus.NewDesc("segstore_flush_appends", "Appends carried by each group-commit flush.", []string{"log"}, nil)
)

func (c *logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAppends, descRecords, descSyncs, descBatch, descSyncTime, descHits, descMisses, descSegments, descBytes, descEnd, descExported, descSyncHist, descBatch2} {
		ch <- d
	}
}

func (c *logCollector) Collect(ch chan<- prometheus.Metric) {
	for name, l := range c.logs {
		st := l.Stats()
		counter := func(d *prometheus.Desc, v float64, labels ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, append([]string{name}, labels...)...)
		}
		gauge := func(d *prometheus.Desc, v float64) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, name)
		}
		counter(descAppends, float64(st.Appends))
		counter(descRecords, float64(st.Records))
		counter(descSyncs, float64(st.Syncs))
		gauge(descBatch, st.MeanBatch)
		gauge(descSyncTime, st.MeanSync.Seconds())
		counter(descHits, float64(st.Cache.Hits))
		counter(descMisses, float64(st.Cache.Misses))
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
			ch <- prometheus.MustNewConstHistogram(d, h.Count, h.Sum, buckets, name)
		}
	}
}
