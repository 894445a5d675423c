package peer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segstore/segstore/engine"
)

// ErrDiverged: the leader's log no longer extends the follower's (it was
// truncated behind the follower, or rewritten). Following stops.
var ErrDiverged = errors.New("peer: the leader's log diverged from the follower's")

// FollowOptions configure Follow.
type FollowOptions struct {
	Name  string // the log's name on the leader
	Token string // bearer token, if the leader wants one
	// Client makes the requests; default a client with a header timeout.
	// Without one, sealed segments of an http:// leader are fetched over
	// a connection of their own and spliced into the file.
	Client     *http.Client
	Wait       time.Duration
	MinBackoff time.Duration // first pause after a failure; default 100ms
	MaxBackoff time.Duration // longest pause; default 5s
	Logger     *slog.Logger  // default slog.Default()
	// Progress, if set, receives the follower's figures after each step.
	Progress func(FollowStats)
	// Registry, if set, receives the follower's gauges (applied offset,
	// leader end, lag, staged bytes, imports, failures), labelled by Name.
	Registry *prometheus.Registry
}

// FollowStats say how far a follower is.
type FollowStats struct {
	Applied     uint64 // the follower log's end: records below it are replicated and durable
	LeaderEnd   uint64 // the leader's durable end, as last seen
	Staged      int64  // bytes of the leader's active segment received and durable (StageFile), imported once it is sealed
	Imported    int    // segments imported
	Failures    int    // failed steps (retried with backoff)
	LastFailure string
}

// Lag is how many records the follower is behind, as last seen.
func (s FollowStats) Lag() uint64 { return s.LeaderEnd - min(s.Applied, s.LeaderEnd) }

// follower is the state of one Follow.
type follower struct {
	base   *url.URL
	log    *engine.Log
	opts   FollowOptions
	stats  FollowStats
	stage  *stage // the start of the leader's active segment, while it is not sealed
	client *http.Client
	pub    atomic.Pointer[FollowStats]
}

// Follow replicates the log named opts.Name from the server at leaderURL
// into l until ctx is done or the logs diverge. It imports the leader's
// sealed segments (verified, byte for byte), and receives the active
// segment's durable bytes as they come (long-polling the tail) into
// StageFile in l's directory, each response made durable before the next
// is asked for, importing the segment when the leader seals it. If the
// leader is lost, Promote makes the staged records part of l. l must not
// be appended to by anyone else. After a disconnect it retries with
// backoff; after a restart it resumes from l's end and what is staged. It
// returns ctx's error, or an error wrapping ErrDiverged.
func Follow(ctx context.Context, leaderURL string, l *engine.Log, opts FollowOptions) error {
	u, err := url.Parse(leaderURL)
	if err != nil {
		return fmt.Errorf("peer: leader URL %q: %w", leaderURL, err)
	}
	if opts.Wait <= 0 {
		opts.Wait = 10 * time.Second
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	st, err := openStage(l.Dir())
	if err != nil {
		return err
	}
	defer st.f.Close()
	f := &follower{base: u, log: l, opts: opts, client: opts.Client, stage: st}
	if f.client == nil {
		f.client = &http.Client{Transport: &http.Transport{ResponseHeaderTimeout: 10*time.Second + opts.Wait}}
	}
	if opts.Registry != nil {
		unregister := f.register(opts.Registry)
		defer unregister()
	}
	backoff := opts.MinBackoff
	for {
		err := f.step(ctx)
		f.stats.Applied = l.EndOffset()
		f.stats.Staged = st.size
		if err != nil && ctx.Err() == nil && !errors.Is(err, ErrDiverged) {
			f.stats.Failures++
			f.stats.LastFailure = err.Error()
		}
		f.publish()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrDiverged):
			return err
		case err != nil:
			opts.Logger.Warn("segstore: follow step failed, retrying", "leader", leaderURL, "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, opts.MaxBackoff)
		default:
			backoff = opts.MinBackoff
		}
	}
}

func (f *follower) get(ctx context.Context, path string, query url.Values) (*http.Response, error) {
	u := f.base.JoinPath(path)
	u.RawQuery = query.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	if f.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+f.opts.Token)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 300 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		return nil, &statusError{code: resp.StatusCode, msg: fmt.Sprintf("peer: GET %s: %s: %s", u.Redacted(), resp.Status, bytes.TrimSpace(msg))}
	}
	return resp, nil
}

// statusError is a leader's answer other than success.
type statusError struct {
	code int
	msg  string
}

func (e *statusError) Error() string { return e.msg }

// step makes one move: import the next sealed segment, or receive more of
// the active one.
func (f *follower) step(ctx context.Context) error {
	resp, err := f.get(ctx, "/v1/logs/"+url.PathEscape(f.opts.Name)+"/segments", nil)
	if err != nil {
		return err
	}
	var segs []SegmentEntry
	err = json.NewDecoder(resp.Body).Decode(&segs)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("peer: the segment list of log %q at %s: %w", f.opts.Name, f.base.Redacted(), err)
	}
	if len(segs) == 0 {
		return fmt.Errorf("peer: %s lists no segments for log %q (a served log always has an active one: is this a segstore server?)", f.base.Redacted(), f.opts.Name)
	}
	f.stats.LeaderEnd = segs[len(segs)-1].Next
	next, err := f.nextSegment(segs)
	if err != nil {
		return err
	}
	if next == nil { // caught up with a leader whose active segment is empty and ahead
		return f.waitTail(ctx, segs[len(segs)-1])
	}
	if !next.Sealed || f.stage.holds(next.Base) {
		return f.waitTail(ctx, *next)
	}
	// Import the run of sealed segments that follows, in order.
	for i := slices.IndexFunc(segs, func(s SegmentEntry) bool { return s.Base == next.Base }); i < len(segs) && segs[i].Sealed; i++ {
		if segs[i].Base != f.log.EndOffset() && i > 0 {
			break // not contiguous with what was just imported: list again
		}
		if err := f.importSealed(ctx, segs[i]); err != nil {
			return err
		}
		f.stats.Applied = f.log.EndOffset()
		f.publish()
		if ctx.Err() != nil {
			return nil
		}
	}
	return nil
}

// nextSegment finds the leader's segment that continues the follower's
// log, checking that the leader still holds what the follower has.
func (f *follower) nextSegment(segs []SegmentEntry) (*SegmentEntry, error) {
	mine := f.log.Segments()
	if a := mine[len(mine)-1]; !a.Sealed && a.Next != a.Base {
		return nil, fmt.Errorf("%w: the follower's active segment holds records %d..%d of its own (appended locally, or promoted): a follower only imports",
			ErrDiverged, a.Base, a.Next-1)
	}
	end := f.log.EndOffset()
	empty := end == f.log.StartOffset()
	if !empty {
		// The follower's last sealed segment must be the leader's too.
		for i := len(mine) - 1; i >= 0; i-- {
			if !mine[i].Sealed {
				continue
			}
			for _, s := range segs {
				if s.Base == mine[i].Base && (!s.Sealed || s.Checksum != fmt.Sprintf("%08x", mine[i].FooterCRC) || s.Next != mine[i].Next) {
					return nil, fmt.Errorf("%w: the leader's segment %d (next %d, checksum %q) differs from the follower's (next %d, checksum %08x)",
						ErrDiverged, s.Base, s.Next, s.Checksum, mine[i].Next, mine[i].FooterCRC)
				}
			}
			break
		}
	}
	for i := range segs {
		s := &segs[i]
		switch {
		case s.Base == end:
			return s, nil
		case empty && i == 0 && s.Base > end:
			return s, nil // a new follower starts at the leader's first segment
		case s.Base < end && end < s.Next:
			return nil, fmt.Errorf("%w: the follower ends at %d, inside the leader's segment [%d, %d)", ErrDiverged, end, s.Base, s.Next)
		}
	}
	if first := segs[0].Base; end < first {
		return nil, fmt.Errorf("%w: the leader starts at %d, past the follower's end %d (truncated behind the follower)", ErrDiverged, first, end)
	}
	if last := segs[len(segs)-1]; end > last.Next {
		return nil, fmt.Errorf("%w: the follower ends at %d, past the leader's end %d (the leader lost or truncated records)", ErrDiverged, end, last.Next)
	}
	return nil, nil
}

func (f *follower) importSealed(ctx context.Context, s SegmentEntry) error {
	path := fmt.Sprintf("/v1/logs/%s/segments/%d", url.PathEscape(f.opts.Name), s.Base)
	if f.base.Scheme == "http" && f.opts.Client == nil {
		return f.importRaw(ctx, path, s)
	}
	resp, err := f.get(ctx, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.ContentLength != s.Size {
		return fmt.Errorf("peer: segment %d: the leader sent %d bytes, its list said %d", s.Base, resp.ContentLength, s.Size)
	}
	if _, err := f.log.ImportSegment(resp.Body, s.Base, s.Size); err != nil {
		return err
	}
	f.stats.Imported++
	return nil
}

// importRaw fetches a segment over a connection of its own: one GET, the
// response parsed with net/http, then the body read straight from the
// socket, so that ImportSegment splices it into the file (net/http's
// body reader would make that a copy through user space).
func (f *follower) importRaw(ctx context.Context, path string, s SegmentEntry) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", f.base.Host)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	req, err := http.NewRequest(http.MethodGet, f.base.JoinPath(path).String(), nil)
	if err != nil {
		return err
	}
	req.Close = true
	if f.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+f.opts.Token)
	}
	if err := req.Write(conn); err != nil {
		return err
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || resp.ContentLength != s.Size || len(resp.TransferEncoding) > 0 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("peer: GET %s: %s, %d bytes (the list said %d): %s", path, resp.Status, resp.ContentLength, s.Size, bytes.TrimSpace(msg))
	}
	head, _ := br.Peek(br.Buffered()) // body bytes read in with the headers
	if _, err := f.log.ImportSegment(&engine.Stream{Head: head, Body: conn}, s.Base, s.Size); err != nil {
		return err
	}
	f.stats.Imported++
	return nil
}

// waitTail asks for the bytes of segment s past what is staged, waiting
// for new ones, and stages them; once the segment is sealed and whole, it
// is imported.
func (f *follower) waitTail(ctx context.Context, s SegmentEntry) error {
	if err := f.stage.start(s.Base); err != nil {
		return err
	}
	q := url.Values{"base": {strconv.FormatUint(s.Base, 10)}, "pos": {strconv.FormatInt(f.stage.size, 10)}, "wait": {f.opts.Wait.String()}}
	resp, err := f.get(ctx, "/v1/logs/"+url.PathEscape(f.opts.Name)+"/tail", q)
	var se *statusError
	if errors.As(err, &se) && se.code == http.StatusRequestedRangeNotSatisfiable {
		// The segment is now shorter than what is staged: the leader cut
		// it (TruncateBack). The staged bytes are not the leader's any more.
		return errors.Join(err, f.stage.cut(0))
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		if err := f.stage.append(resp.Body); err != nil {
			return err
		}
	}
	sealed, _ := strconv.ParseBool(resp.Header.Get("Segstore-Sealed"))
	size, _ := strconv.ParseInt(resp.Header.Get("Segstore-Size"), 10, 64)
	if next, err := strconv.ParseUint(resp.Header.Get("Segstore-Next"), 10, 64); err == nil {
		f.stats.LeaderEnd = max(f.stats.LeaderEnd, next)
	}
	if !sealed || f.stage.size != size {
		return nil
	}
	r, err := f.stage.reader()
	if err == nil {
		_, err = f.log.ImportSegment(r, s.Base, size)
	}
	// Imported, or refused: either way it is fetched whole again if needed.
	if cerr := f.stage.cut(0); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	f.stats.Imported++
	return nil
}

// register exports the follower's figures as gauges, read at scrape
// time from the last published snapshot.
func (f *follower) register(r *prometheus.Registry) (unregister func()) {
	labels := prometheus.Labels{"log": f.opts.Name}
	var cs []prometheus.Collector
	for name, get := range map[string]func(FollowStats) float64{
		"applied_offset":    func(s FollowStats) float64 { return float64(s.Applied) },
		"leader_end_offset": func(s FollowStats) float64 { return float64(s.LeaderEnd) },
		"lag_records":       func(s FollowStats) float64 { return float64(s.Lag()) },
		"staged_bytes":      func(s FollowStats) float64 { return float64(s.Staged) },
		"imported_segments": func(s FollowStats) float64 { return float64(s.Imported) },
		"failures":          func(s FollowStats) float64 { return float64(s.Failures) },
	} {
		c := prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "segstore_follower_" + name, Help: "Follower " + strings.ReplaceAll(name, "_", " ") + ".", ConstLabels: labels},
			func() float64 {
				if s := f.pub.Load(); s != nil {
					return get(*s)
				}
				return 0
			})
		if r.Register(c) == nil {
			cs = append(cs, c)
		}
	}
	return func() {
		for _, c := range cs {
			r.Unregister(c)
		}
	}
}

// publish makes the current figures visible to Progress and the gauges.
func (f *follower) publish() {
	snap := f.stats
	f.pub.Store(&snap)
	if f.opts.Progress != nil {
		f.opts.Progress(snap)
	}
}
