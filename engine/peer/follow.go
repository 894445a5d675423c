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
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
)

// ErrDiverged: the leader's log no longer extends the follower's (it was
// truncated behind the follower, or rewritten). Following stops.
var ErrDiverged = errors.New("peer: the leader's log diverged from the follower's")

// ErrStalled: the leader left the follower waiting longer than
// FollowOptions.ReadTimeout (to connect, for response headers beyond a
// tail's long poll, or between two reads of a body). The step fails and
// is retried with backoff.
var ErrStalled = errors.New("peer: the leader stalled")

// ErrBadAnswer: the leader's answer was refused before anything of it was
// kept (a segment list or headers too long, entries that are not a log's
// segments, a body whose size disagrees with what was asked, a segment
// larger than the follower takes). The step fails and is retried with
// backoff; nothing of the answer is imported.
var ErrBadAnswer = errors.New("peer: the leader's answer was refused")

// Bounds on what the follower reads from a leader.
const (
	// maxHeaderBytes bounds a response's status line and headers (a
	// segstore server sends well under 1 KiB).
	maxHeaderBytes = 64 << 10
	// defaultMaxListBytes is FollowOptions.MaxListBytes' default: about
	// 70,000 segments.
	defaultMaxListBytes = 8 << 20
	// maxOffset: offsets from 2^63 up are absurd (no log appends that
	// many records) and would overflow the follower's arithmetic.
	maxOffset = 1 << 63
	// piece is how much of a body must arrive within each ReadTimeout:
	// a leader that sends nothing, or drips a byte at a time, fails the
	// step, while one that is merely slow (down to piece/ReadTimeout,
	// 8.5 KiB/s by default) does not.
	piece = 256 << 10
)

// FollowOptions configure Follow.
type FollowOptions struct {
	Name  string // the log's name on the leader
	Token string // bearer token, if the leader wants one
	// Client makes the requests. The default client follows no redirects
	// and reads at most 64 KiB of response headers; a custom one's limits
	// are its own (ReadTimeout and the body bounds apply to both). Without
	// one, sealed segments of an http:// leader are fetched over a
	// connection of their own and spliced into the file.
	Client *http.Client
	Wait   time.Duration // a tail request's long poll; default 10s
	// MinPoll bounds the poll rate when the leader has nothing new: a step
	// that brought nothing (no record imported, no byte staged) and took
	// less than MinPoll is followed by a pause until MinPoll has passed
	// since it began, so a leader that answers tail polls at once with
	// nothing (a server with a MaxWait shorter than Wait, a proxy that cuts
	// long polls, a hostile leader) costs at most two or three requests per
	// MinPoll. Steps that bring data go on at once. Default the smaller
	// of Wait and 1s.
	MinPoll time.Duration
	// ReadTimeout is the longest the follower waits on a leader: to
	// connect, for response headers (beyond a tail's Wait), and for each
	// 256 KiB of a body (or the rest of it, if less). A leader that does
	// not deliver within it fails the step (ErrStalled), which is retried.
	// Default 30s.
	ReadTimeout time.Duration
	// MaxListBytes bounds the leader's segment list, in bytes (about 120
	// per segment; decoding takes up to about 4 times as much memory).
	// Default 8 MiB.
	MaxListBytes int64
	MinBackoff   time.Duration // first pause after a failure; default 100ms
	MaxBackoff   time.Duration // longest pause; default 5s
	// Logger receives a warning for every failed step (the leader's URL,
	// the error, the pause before the retry). Default slog.Default().
	Logger *slog.Logger
	// Progress, if set, receives the follower's figures after each step.
	Progress func(FollowStats)
	// Registry, if set, receives the follower's gauges (applied offset,
	// leader end, lag, staged bytes, imports, failures), labelled by Name.
	Registry *prometheus.Registry
}

// FollowStats say how far a follower is.
type FollowStats struct {
	Applied   uint64 // the follower log's end: records below it are replicated and durable
	LeaderEnd uint64 // the leader's durable end, as last seen
	Staged    int64  // bytes of the leader's active segment received and durable (StageFile), imported once it is sealed
	// Received: every record below it is durable on the follower,
	// applied or staged (readable once the leader seals its segment, or
	// after Promote). At least Applied.
	Received    uint64
	Imported    int // segments imported
	Steps       int // steps that succeeded: the leader was reached and its answers accepted
	Failures    int // failed steps (retried with backoff)
	LastFailure string
}

// Lag is how many records the follower is behind, as last seen.
func (s FollowStats) Lag() uint64 { return s.LeaderEnd - min(s.Applied, s.LeaderEnd) }

// follower is the state of one Follow.
type follower struct {
	base  *url.URL
	log   *engine.Log
	opts  FollowOptions
	stats FollowStats
	stage *stage // the start of the leader's active segment, while it is not sealed
	// stagedNext is the offset after the records staged, as the leader
	// said when the stage reached the size it reported; 0 when unknown.
	stagedNext uint64
	client     *http.Client
	pub        atomic.Pointer[FollowStats]
}

// Follow replicates the log named opts.Name from the server at leaderURL
// into l until ctx is done or the logs diverge. It imports the leader's
// sealed segments (verified, byte for byte), and receives the active
// segment's durable bytes as they come (long-polling the tail) into
// StageFile in l's directory, each response made durable before the next
// is asked for, importing the segment when the leader seals it. If the
// leader is lost, Promote makes the staged records part of l. l must not
// be appended to by anyone else. The leader is not trusted: what is read
// from it is bounded in size (headers, the segment list, bodies of
// exactly the size asked for, segments no larger than l's
// MaxImportSize) and in time (ReadTimeout); an answer outside the bounds
// fails the step (ErrBadAnswer, ErrStalled, or the import's ErrImport),
// which is logged and retried with backoff, as after a disconnect. A
// leader with nothing new is polled at most about once per MinPoll. After
// a restart it resumes from l's end and what is staged. It returns ctx's
// error, an error wrapping ErrDiverged, or, once l takes no more changes
// (engine.ErrFailed, ErrClosed, ErrReadOnly: no retry could succeed), an
// error wrapping l's.
func Follow(ctx context.Context, leaderURL string, l *engine.Log, opts FollowOptions) error {
	u, err := url.Parse(leaderURL)
	if err != nil {
		return fmt.Errorf("peer: leader URL %q: %w", leaderURL, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
		return fmt.Errorf("peer: leader URL %q: want http://host[:port] or https://host[:port]", u.Redacted())
	}
	if opts.Wait <= 0 {
		opts.Wait = 10 * time.Second
	}
	if opts.MinPoll <= 0 {
		opts.MinPoll = min(opts.Wait, time.Second)
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 30 * time.Second
	}
	if opts.MaxListBytes <= 0 {
		opts.MaxListBytes = defaultMaxListBytes
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
	st, err := openStage(l.Files())
	if err != nil {
		return err
	}
	defer st.f.Close()
	f := &follower{base: u, log: l, opts: opts, client: opts.Client, stage: st}
	if f.client == nil {
		f.client = &http.Client{
			// No timeouts of its own: get's timers bound every wait.
			Transport: &http.Transport{MaxResponseHeaderBytes: maxHeaderBytes},
			// A leader's redirect is an answer like any other: refused.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if opts.Registry != nil {
		unregister := f.register(opts.Registry)
		defer unregister()
	}
	backoff := opts.MinBackoff
	for {
		began, applied, staged, imported := time.Now(), l.EndOffset(), st.size, f.stats.Imported
		err := f.step(ctx)
		f.stats.Applied = l.EndOffset()
		f.stats.Staged = st.size
		if st.size == 0 {
			f.stagedNext = 0
		}
		f.stats.Received = max(f.stats.Applied, f.stagedNext)
		switch {
		case err == nil:
			f.stats.Steps++
		case ctx.Err() == nil && !errors.Is(err, ErrDiverged):
			f.stats.Failures++
			f.stats.LastFailure = err.Error()
		}
		f.publish()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrDiverged):
			return err
		case errors.Is(err, engine.ErrFailed) || errors.Is(err, engine.ErrClosed) || errors.Is(err, engine.ErrReadOnly):
			return fmt.Errorf("peer: following %s: the follower's log in %s takes no more imports, so no retry can succeed (a failed log recovers when reopened): %w", u.Redacted(), l.Dir(), err)
		case err != nil:
			opts.Logger.Warn("segstore: follow step failed, retrying", "leader", u.Redacted(), "log", opts.Name, "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, opts.MaxBackoff)
		default:
			backoff = opts.MinBackoff
			idle := f.stats.Applied == applied && st.size == staged && f.stats.Imported == imported
			if rest := opts.MinPoll - time.Since(began); idle && rest > 0 {
				t := time.NewTimer(rest)
				select {
				case <-ctx.Done():
					t.Stop()
					return ctx.Err()
				case <-t.C:
				}
			}
		}
	}
}

// get asks the leader for path (only the bytes rng names, if rng is a
// Range header's value). The request fails with ErrStalled if the
// headers take longer than wait plus ReadTimeout, or if the body, once
// they are in, does not bring each piece (or its end) within ReadTimeout.
func (f *follower) get(ctx context.Context, path string, query url.Values, wait time.Duration, rng string) (*http.Response, error) {
	u := f.base.JoinPath(path)
	u.RawQuery = query.Encode()
	rctx, cancel := context.WithCancelCause(ctx)
	stalled := func(d time.Duration, what string) *time.Timer {
		return time.AfterFunc(d, func() {
			cancel(fmt.Errorf("%w: GET %s: %s within %s (FollowOptions.ReadTimeout)", ErrStalled, u.Redacted(), what, f.opts.ReadTimeout))
		})
	}
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel(nil)
		return nil, err
	}
	if f.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+f.opts.Token)
	}
	if rng != "" {
		req.Header.Set("Range", rng)
	}
	t := stalled(wait+f.opts.ReadTimeout, "no answer")
	resp, err := f.client.Do(req)
	t.Stop()
	if err != nil {
		cause := context.Cause(rctx)
		cancel(nil)
		if errors.Is(cause, ErrStalled) {
			return nil, cause
		}
		return nil, err
	}
	body := &watchedBody{body: resp.Body, ctx: rctx, cancel: cancel, idle: f.opts.ReadTimeout, t: stalled(f.opts.ReadTimeout, fmt.Sprintf("not %d body bytes", piece))}
	resp.Body = body
	if resp.StatusCode >= 300 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		resp.Body.Close()
		return nil, &statusError{code: resp.StatusCode, msg: fmt.Sprintf("peer: GET %s: %s: %s", u.Redacted(), resp.Status, bytes.TrimSpace(msg))}
	}
	return resp, nil
}

// watchedBody is a response body whose request is cancelled (ErrStalled,
// as the cause) when ReadTimeout passes before the next piece of it (or
// its end) has been read.
type watchedBody struct {
	body   io.ReadCloser
	ctx    context.Context
	cancel context.CancelCauseFunc
	idle   time.Duration
	t      *time.Timer
	got    int // bytes read since the timer was last renewed
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	if b.got += n; b.got >= piece {
		b.got = 0
		b.t.Reset(b.idle)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		if cause := context.Cause(b.ctx); errors.Is(cause, ErrStalled) {
			err = cause
		}
	}
	return n, err
}

func (b *watchedBody) Close() error {
	b.t.Stop()
	err := b.body.Close()
	b.cancel(nil)
	return err
}

// step makes one move: import the next sealed segment, or receive more of
// the active one.
func (f *follower) step(ctx context.Context) error {
	segs, err := f.list(ctx)
	if err != nil {
		return err
	}
	f.stats.LeaderEnd = segs[len(segs)-1].Next
	next, mine, err := f.nextSegment(segs)
	if err != nil {
		return err
	}
	if mine != nil {
		if err := f.sameFile(ctx, *mine); err != nil {
			return err
		}
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

// list reads the leader's segment list, at most MaxListBytes of it, and
// checks that it describes a log: contiguous segments, all sealed but the
// last, each within the sizes the follower takes.
func (f *follower) list(ctx context.Context) ([]SegmentEntry, error) {
	resp, err := f.get(ctx, "/v1/logs/"+url.PathEscape(f.opts.Name)+"/segments", nil, 0, "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	lr := &io.LimitedReader{R: resp.Body, N: f.opts.MaxListBytes}
	dec := json.NewDecoder(lr)
	var segs []SegmentEntry
	err = dec.Decode(&segs)
	if err == nil { // the body must end with the list
		var rest []byte
		if rest, err = io.ReadAll(io.MultiReader(dec.Buffered(), lr)); err == nil && len(bytes.TrimSpace(rest)) > 0 {
			err = fmt.Errorf("%d more bytes after the list", len(rest))
		}
	}
	if err != nil {
		if lr.N <= 0 {
			return nil, fmt.Errorf("%w: the segment list of log %q at %s is longer than %d bytes (FollowOptions.MaxListBytes)", ErrBadAnswer, f.opts.Name, f.base.Redacted(), f.opts.MaxListBytes)
		}
		return nil, fmt.Errorf("%w: the segment list of log %q at %s: %w", ErrBadAnswer, f.opts.Name, f.base.Redacted(), err)
	}
	if len(segs) == 0 {
		return nil, fmt.Errorf("%w: %s lists no segments for log %q (a served log always has an active one: is this a segstore server?)", ErrBadAnswer, f.base.Redacted(), f.opts.Name)
	}
	limit := f.log.MaxImportSize()
	for i, s := range segs {
		var why string
		switch {
		case s.Next < s.Base:
			why = fmt.Sprintf("ends at offset %d, before it starts", s.Next)
		case s.Next >= maxOffset:
			why = fmt.Sprintf("ends at offset %d, past 2^63", s.Next)
		case i > 0 && s.Base != segs[i-1].Next:
			why = fmt.Sprintf("starts where the segment before it does not end (%d): a log's segments are contiguous", segs[i-1].Next)
		case !s.Sealed && i < len(segs)-1:
			why = "is not sealed, and is not the last"
		case s.Sealed && s.Next == s.Base:
			why = "is sealed with no records (a log never seals an empty segment; importing it would give the next segment its file name)"
		case s.Size < 0 || (s.Sealed && s.Size < wal.DataStart):
			why = fmt.Sprintf("has %d bytes, less than a sealed segment file's header", s.Size)
		case s.Size > limit:
			why = fmt.Sprintf("has %d bytes, more than the %d this follower takes (engine.Log.MaxImportSize): open the follower with a SegmentSize at least the leader's", s.Size, limit)
		}
		if why != "" {
			return nil, fmt.Errorf("%w: %s lists, for log %q, segment %d (entry %d) that %s", ErrBadAnswer, f.base.Redacted(), f.opts.Name, s.Base, i, why)
		}
	}
	return segs, nil
}

// nextSegment finds the leader's segment that continues the follower's
// log, checking that the leader's list still holds what the follower has.
// It also returns the follower's last sealed segment when the leader lists
// it, for sameFile to check that the leader's file is that very file.
func (f *follower) nextSegment(segs []SegmentEntry) (next *SegmentEntry, held *engine.SegmentInfo, err error) {
	mine := f.log.Segments()
	if len(mine) == 0 { // a log lists its active segment until it is closed
		return nil, nil, fmt.Errorf("peer: the follower's log in %s lists no segments: %w", f.log.Dir(), engine.ErrClosed)
	}
	if a := mine[len(mine)-1]; !a.Sealed && a.Next != a.Base {
		return nil, nil, fmt.Errorf("%w: the follower's active segment holds records %d..%d of its own (appended locally, or promoted): a follower only imports",
			ErrDiverged, a.Base, a.Next-1)
	}
	end := f.log.EndOffset()
	empty := end == f.log.StartOffset()
	if !empty {
		// Every segment of the leader's that overlaps the follower's last
		// sealed one must be that very segment.
		for i := len(mine) - 1; i >= 0; i-- {
			m := mine[i]
			if !m.Sealed {
				continue
			}
			for _, s := range segs {
				overlaps := s.Base == m.Base || (s.Base < m.Next && m.Base < s.Next)
				if overlaps && (s.Base != m.Base || s.Next != m.Next || !s.Sealed || s.Checksum != fmt.Sprintf("%08x", m.FooterCRC)) {
					return nil, nil, fmt.Errorf("%w: the leader's segment [%d, %d) (sealed %v, checksum %q) differs from the follower's [%d, %d) (checksum %08x)",
						ErrDiverged, s.Base, s.Next, s.Sealed, s.Checksum, m.Base, m.Next, m.FooterCRC)
				}
				if overlaps {
					held = &m
				}
			}
			break
		}
	}
	for i := range segs {
		s := &segs[i]
		switch {
		case s.Base == end:
			return s, held, nil
		case empty && i == 0 && s.Base > end:
			return s, held, nil // a new follower starts at the leader's first segment
		case s.Base < end && end < s.Next:
			return nil, nil, fmt.Errorf("%w: the follower ends at %d, inside the leader's segment [%d, %d)", ErrDiverged, end, s.Base, s.Next)
		}
	}
	if first := segs[0].Base; end < first {
		return nil, nil, fmt.Errorf("%w: the leader starts at %d, past the follower's end %d (truncated behind the follower)", ErrDiverged, first, end)
	}
	if last := segs[len(segs)-1]; end > last.Next {
		return nil, nil, fmt.Errorf("%w: the follower ends at %d, past the leader's end %d (the leader lost or truncated records)", ErrDiverged, end, last.Next)
	}
	return nil, held, nil
}

// sameFile checks that the leader's segment m.Base is the very file the
// follower holds as m: same SegmentID in the file header (random, new for
// every file a log writes, kept by an import that copies the file byte for
// byte). The list's next offset and footer checksum do not tell a segment
// from one the leader cut (TruncateBack) and refilled with records of the
// same sizes: its footer can be byte-identical. One ranged request reads
// the leader's header.
func (f *follower) sameFile(ctx context.Context, m engine.SegmentInfo) error {
	mineID, err := f.localSegmentID(m)
	if err != nil {
		return err
	}
	path := f.segmentPath(m.Base)
	resp, err := f.get(ctx, path, nil, 0, fmt.Sprintf("bytes=0-%d", wal.FileHeaderLen-1))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b := make([]byte, wal.FileHeaderLen)
	if _, err := io.ReadFull(resp.Body, b); err != nil {
		return fmt.Errorf("%w: the header of segment %d from %s: %w", ErrBadAnswer, m.Base, f.base.Redacted(), err)
	}
	h, err := wal.DecodeFileHeader(b)
	if err != nil {
		return fmt.Errorf("%w: the header of segment %d from %s: %w", ErrBadAnswer, m.Base, f.base.Redacted(), err)
	}
	if h.SegmentID != mineID || h.BaseOffset != m.Base {
		return fmt.Errorf("%w: the leader's segment %d is another file than the follower's (segment ID %016x, the follower's %016x): the leader rewrote it (TruncateBack) after the follower imported it",
			ErrDiverged, m.Base, h.SegmentID, mineID)
	}
	return nil
}

// localSegmentID is the SegmentID in the header of the follower's
// segment m, as the log holds it (a SegmentView's Info).
func (f *follower) localSegmentID(m engine.SegmentInfo) (uint64, error) {
	v, err := f.log.OpenSegment(m.Base)
	if err != nil {
		return 0, fmt.Errorf("peer: reading the header of the follower's segment %d (%s in %s): %w", m.Base, m.File, f.log.Dir(), err)
	}
	id := v.Info().SegmentID
	if err := v.Close(); err != nil {
		return 0, fmt.Errorf("peer: closing the follower's segment %d (%s in %s): %w", m.Base, m.File, f.log.Dir(), err)
	}
	return id, nil
}

func (f *follower) importSealed(ctx context.Context, s SegmentEntry) error {
	path := f.segmentPath(s.Base)
	if f.base.Scheme == "http" && f.opts.Client == nil {
		return f.importRaw(ctx, path, s)
	}
	resp, err := f.get(ctx, path, nil, 0, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.ContentLength != s.Size {
		return fmt.Errorf("%w: segment %d: the leader sends %d bytes (Content-Length), its list said %d", ErrBadAnswer, s.Base, resp.ContentLength, s.Size)
	}
	if _, err := f.log.ImportSegment(resp.Body, s.Base, s.Size); err != nil {
		return err
	}
	f.stats.Imported++
	return nil
}

// segmentPath is the leader's path of the sealed segment whose base is
// base.
func (f *follower) segmentPath(base uint64) string {
	return fmt.Sprintf("/v1/logs/%s/segments/%d", url.PathEscape(f.opts.Name), base)
}

// importRaw fetches a segment over a connection of its own: one GET, the
// response parsed with net/http (at most maxHeaderBytes of it), then the
// body read straight from the socket, so that ImportSegment splices it
// into the file (net/http's body reader would make that a copy through
// user space). The connection's deadline is ReadTimeout from each step:
// the dial, the request and headers, and each piece of the body.
func (f *follower) importRaw(ctx context.Context, path string, s SegmentEntry) error {
	target := f.base.JoinPath(path)
	stalled := func(err error, what string) error {
		var ne net.Error
		if ctx.Err() == nil && errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("%w: GET %s: %s within %s (FollowOptions.ReadTimeout): %w", ErrStalled, target.Redacted(), what, f.opts.ReadTimeout, err)
		}
		return err
	}
	d := net.Dialer{Timeout: f.opts.ReadTimeout}
	conn, err := d.DialContext(ctx, "tcp", dialAddr(f.base))
	if err != nil {
		return stalled(err, "no connection")
	}
	defer conn.Close()
	// renew moves the deadline on, unless ctx is done (then it stays
	// passed, so that every read returns at once).
	var mu sync.Mutex
	done := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		done = true
		conn.SetDeadline(time.Now())
	})
	defer stop()
	renew := func() error {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return ctx.Err()
		}
		return conn.SetDeadline(time.Now().Add(f.opts.ReadTimeout))
	}
	if err := renew(); err != nil {
		return err
	}
	req, err := http.NewRequest(http.MethodGet, target.String(), nil)
	if err != nil {
		return err
	}
	req.Close = true
	if f.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+f.opts.Token)
	}
	if err := req.Write(conn); err != nil {
		return stalled(err, "request not sent")
	}
	head := &io.LimitedReader{R: conn, N: maxHeaderBytes}
	br := bufio.NewReader(head)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		if head.N <= 0 {
			return fmt.Errorf("%w: GET %s: the response's headers are longer than %d bytes", ErrBadAnswer, target.Redacted(), maxHeaderBytes)
		}
		return stalled(err, "no response headers")
	}
	if resp.StatusCode != http.StatusOK || resp.ContentLength != s.Size || len(resp.TransferEncoding) > 0 {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return fmt.Errorf("%w: GET %s: %s, %d bytes (the list said %d): %s", ErrBadAnswer, target.Redacted(), resp.Status, resp.ContentLength, s.Size, bytes.TrimSpace(msg))
	}
	buffered, _ := br.Peek(br.Buffered()) // body bytes read in with the headers
	body := &engine.Stream{Head: buffered, Body: conn, Before: renew, Chunk: piece}
	if _, err := f.log.ImportSegment(body, s.Base, s.Size); err != nil {
		return stalled(err, "no body bytes")
	}
	f.stats.Imported++
	return nil
}

// dialAddr is the host and port of an http:// URL, port 80 if it names
// none.
func dialAddr(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// waitTail asks for the bytes of segment s past what is staged, waiting
// for new ones, and stages them; once the segment is sealed and whole, it
// is imported.
func (f *follower) waitTail(ctx context.Context, s SegmentEntry) error {
	if err := f.stage.start(s.Base); err != nil {
		return err
	}
	q := url.Values{"base": {strconv.FormatUint(s.Base, 10)}, "pos": {strconv.FormatInt(f.stage.size, 10)}, "wait": {f.opts.Wait.String()}}
	resp, err := f.get(ctx, "/v1/logs/"+url.PathEscape(f.opts.Name)+"/tail", q, f.opts.Wait, "")
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
	sealed, err1 := strconv.ParseBool(resp.Header.Get("Segstore-Sealed"))
	size, err2 := strconv.ParseInt(resp.Header.Get("Segstore-Size"), 10, 64)
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: the tail of segment %d from %s at byte %d: %s", ErrBadAnswer, s.Base, f.base.Redacted(), f.stage.size, fmt.Sprintf(format, args...))
	}
	switch limit := f.log.MaxImportSize(); {
	case err1 != nil || err2 != nil:
		return refuse("no Segstore-Sealed and Segstore-Size headers (is this a segstore server?)")
	case size > limit:
		return refuse("the segment has %d bytes, more than the %d this follower takes (engine.Log.MaxImportSize): open the follower with a SegmentSize at least the leader's", size, limit)
	case size < f.stage.size:
		return refuse("the segment has %d bytes, fewer than staged (a segstore server answers 416)", size)
	case resp.StatusCode == http.StatusOK && resp.ContentLength != size-f.stage.size:
		return refuse("%d bytes sent (Content-Length; -1: none), the segment's size says %d", resp.ContentLength, size-f.stage.size)
	case resp.StatusCode != http.StatusOK && size != f.stage.size:
		return refuse("%s with nothing, the segment's size says %d bytes", resp.Status, size-f.stage.size)
	}
	next, err := strconv.ParseUint(resp.Header.Get("Segstore-Next"), 10, 64)
	if err != nil || next >= maxOffset {
		next = 0
	}
	f.stats.LeaderEnd = max(f.stats.LeaderEnd, next)
	if resp.StatusCode == http.StatusOK {
		if err := f.stage.append(resp.Body, resp.ContentLength); err != nil {
			return err
		}
	}
	if f.stage.size == size {
		f.stagedNext = next // every record of the segment's size is staged, and durable
	}
	if !sealed || f.stage.size != size {
		return nil
	}
	if err := f.restageHeader(ctx, s); err != nil {
		return err
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

// restageHeader fetches the header block of the sealed segment s again
// and writes it over the staged one. The leader rewrites its high-water
// mark, inside that block, as its active segment grows, so the block
// staged with the segment's first bytes is older than the sealed file's;
// without this the follower's copy would differ from the leader's there.
func (f *follower) restageHeader(ctx context.Context, s SegmentEntry) error {
	path := f.segmentPath(s.Base)
	resp, err := f.get(ctx, path, nil, 0, fmt.Sprintf("bytes=0-%d", wal.DataStart-1))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	want := fmt.Sprintf("bytes 0-%d/%d", wal.DataStart-1, s.Size)
	if cr := resp.Header.Get("Content-Range"); resp.StatusCode != http.StatusPartialContent || resp.ContentLength != wal.DataStart || cr != want {
		return fmt.Errorf("%w: the header block of segment %d from %s: %s, %d bytes of %q, where a segstore server answers 206 with the %d asked for (%s)", ErrBadAnswer, s.Base, f.base.Redacted(), resp.Status, resp.ContentLength, cr, wal.DataStart, want)
	}
	return f.stage.overwrite(resp.Body, wal.DataStart)
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
