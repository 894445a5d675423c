package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/engine/peer"
)

// ServeOptions configure Serve.
type ServeOptions struct {
	Listen      string // address; default 127.0.0.1:7070
	Token       string
	AllowRemote bool // serve non-loopback clients without a token
	// AllowedHosts: without a token, requests may name these hosts too
	// (peer.ServerOptions.AllowedHosts).
	AllowedHosts []string
	MaxExports   int // bodies sent at once (peer.ServerOptions.MaxExports); default 64
	// WriteTimeout: peer.ServerOptions.WriteTimeout; default 30s.
	WriteTimeout time.Duration
	RateLimit    int64
	// TLSCert and TLSKey, both set, serve HTTPS (bodies are then copied
	// through user space: this kernel has no kTLS).
	TLSCert, TLSKey string
	// Refresh: a log written by another process is looked at for new
	// records whenever its files change (inotify), and at least this
	// often; default 250ms.
	Refresh time.Duration
	// ReadOnly: open every log read-only and keep it refreshed, even one
	// that no process writes (this process never becomes its writer, so
	// one may start beside it, and a store on a read-only mount is
	// served).
	ReadOnly bool
}

// Serve opens each directory as a log named by its base name (in the form
// peer.LogName gives, so a name that is not UTF-8 is served too), and serves
// them until ctx is done. A log no other process writes is opened
// read-write (this process becomes its writer); one that another process
// writes is opened read-only and kept refreshed (engine.KeepRefreshed),
// so its tail is served as the writer appends. ready, if set, is called with the
// address once it listens.
func Serve(ctx context.Context, out io.Writer, dirs []string, opts ServeOptions, ready func(addr string)) error {
	if opts.Listen == "" {
		opts.Listen = "127.0.0.1:7070"
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 250 * time.Millisecond
	}
	logs := map[string]*engine.Log{}
	defer func() {
		for _, l := range logs {
			l.Close()
		}
	}()
	// On return: stop the refreshers, wait for them, then close the logs.
	var refreshers sync.WaitGroup
	defer refreshers.Wait()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var readOnly []*engine.Log // the logs served beside their writer
	for _, dir := range dirs {
		name := peer.LogName(filepath.Base(filepath.Clean(dir)))
		if _, dup := logs[name]; dup {
			return usageError{fmt.Errorf("two directories served as log %q: each log is served under its directory's base name (bytes that are not UTF-8 written as \\xNN); rename one", name)}
		}
		if err := isStore(dir); err != nil {
			return err
		}
		var l *engine.Log
		var err error
		writer := "no process now"
		if !opts.ReadOnly {
			if l, err = openStore(dir, true); err == nil {
				fmt.Fprintf(out, "%s: served as its writer: other processes cannot append while serve runs (serve --read-only serves beside a writer)\n", dir)
			}
		}
		if locked := (*blockdev.LockedError)(nil); opts.ReadOnly || errors.As(err, &locked) {
			if locked != nil {
				writer = "another process"
				if locked.PID > 0 {
					writer = fmt.Sprintf("process %d", locked.PID)
				}
			}
			if l, err = openStore(dir, false); err == nil {
				fmt.Fprintf(out, "%s: served read-only, refreshed as its files change (written by %s)\n", dir, writer)
				readOnly = append(readOnly, l)
				refreshers.Add(1)
				go func() {
					defer refreshers.Done()
					if err := l.KeepRefreshed(ctx, opts.Refresh); ctx.Err() == nil {
						cancel(fmt.Errorf("serving %s, written by another process: %w (restart serve)", dir, err))
					}
				}()
			}
		}
		if err != nil {
			return err
		}
		logs[name] = l
	}
	ln, err := net.Listen("tcp", opts.Listen)
	if err != nil {
		return err
	}
	hs := peer.NewServer(logs, peer.ServerOptions{Token: opts.Token, AllowRemote: opts.AllowRemote, AllowedHosts: opts.AllowedHosts,
		MaxExports: opts.MaxExports, WriteTimeout: opts.WriteTimeout, RateLimit: opts.RateLimit}).HTTPServer("")
	// A request is answered with every record the writer acknowledged
	// before it came, not only with what the last refresh found: a
	// client that appended, then asks, is not shown a log behind its own
	// append. (A failed refresh is KeepRefreshed's to report.)
	handler := hs.Handler
	hs.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, l := range readOnly {
			l.Refresh()
		}
		handler.ServeHTTP(w, r)
	})
	if (opts.TLSCert == "") != (opts.TLSKey == "") {
		ln.Close()
		return usageError{errors.New("--tls-cert and --tls-key go together")}
	}
	scheme := "http"
	if opts.TLSCert != "" {
		scheme = "https"
	}
	fmt.Fprintf(out, "serving %s on %s://%s (GET /v1/logs, /metrics)\n", plural(len(logs), "log"), scheme, ln.Addr())
	if ready != nil {
		ready(ln.Addr().String())
	}
	done := make(chan error, 1)
	go func() {
		if opts.TLSCert != "" {
			done <- hs.ServeTLS(ln, opts.TLSCert, opts.TLSKey)
		} else {
			done <- hs.Serve(ln)
		}
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		shutdown, cancelShutdown := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelShutdown()
		err := hs.Shutdown(shutdown)
		<-done // http.ErrServerClosed, once Shutdown has begun
		if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
			return cause // a refresher stopped serving
		}
		return err
	}
}

// replicationFile, in a follower's directory, says what it follows and how
// far it is (written by Replicate, shown by inspect).
const replicationFile = "REPLICATION.json"

// ReplicationStatus is the content of REPLICATION.json.
type ReplicationStatus struct {
	Leader  string `json:"leader"`
	Name    string `json:"name"`
	Applied uint64 `json:"applied"` // the copy's records below it are readable
	// Received: every record below it is durable here, applied or staged
	// (peer.FollowStats.Received).
	Received  uint64 `json:"received"`
	LeaderEnd uint64 `json:"leader_end"`
	Lag       uint64 `json:"lag"` // LeaderEnd less Received: records the copy does not have
	Staged    int64  `json:"staged_bytes"`
	Imported  int    `json:"imported_segments"`
	// Steps succeeded (the leader was reached and its answer kept) and
	// failed, by the replicate that wrote the file.
	Steps       int       `json:"steps"`
	Failures    int       `json:"failures"`
	LastFailure string    `json:"last_failure,omitempty"`
	Updated     time.Time `json:"updated"`
}

// String is the status as inspect prints it.
func (rp *ReplicationStatus) String() string {
	head := fmt.Sprintf("follower of %s (log %q)", rp.Leader, rp.Name)
	if rp.Steps == 0 {
		return fmt.Sprintf("%s: never reached the leader: %s failed, the last: %s (as of %s)", head, plural(rp.Failures, "attempt"), inReplicateTerms(rp.LastFailure), rp.Updated.Format(timeFormat))
	}
	return fmt.Sprintf("%s: readable below %d, received below %d (%d bytes of the leader's active segment staged), leader at %d, lag %s, %s imported, %d failed steps, as of %s",
		head, rp.Applied, rp.Received, rp.Staged, rp.LeaderEnd, plural(int(rp.Lag), "record"), plural(rp.Imported, "segment"), rp.Failures, rp.Updated.Format(timeFormat))
}

// ReplicateOptions configure Replicate.
type ReplicateOptions struct {
	Name  string // the log's name on the leader; default the directory's base name as serve names it (peer.LogName)
	Token string
	Wait  time.Duration
	// ReadTimeout: a leader silent longer fails the step, which is
	// retried (peer.FollowOptions.ReadTimeout). Default 30s.
	ReadTimeout time.Duration
	// SegmentSize, IndexInterval and MaxWrite of the follower's log
	// (engine.Options; 0: the defaults): a leader's segment is imported
	// only if the follower's own options could have written it (no
	// larger, no sparser index, no larger writes).
	SegmentSize   int64
	IndexInterval int
	MaxWrite      int
	// UntilCaughtUp: return once every record the leader has acknowledged
	// is durable in the copy (applied or staged), instead of following
	// until ctx is done.
	UntilCaughtUp bool
}

// Replicate follows the log at leaderURL into the store in dir (created if
// missing) until ctx is done or the logs diverge, keeping
// DIR/REPLICATION.json up to date. Every failed step (a refused answer, a
// stalled or unreachable leader) is reported on errOut, with the leader's
// URL, and retried. If no step ever succeeded when ctx is done, Replicate
// returns an error saying so.
func Replicate(ctx context.Context, out, errOut io.Writer, leaderURL, dir string, opts ReplicateOptions) error {
	if opts.Name == "" {
		opts.Name = peer.LogName(filepath.Base(filepath.Clean(dir))) // as serve names it
	}
	eopts := engine.DefaultOptions()
	eopts.Logger = quietLogger
	if opts.SegmentSize > 0 {
		eopts.SegmentSize = opts.SegmentSize
	}
	if opts.IndexInterval > 0 {
		eopts.IndexInterval = opts.IndexInterval
	}
	if opts.MaxWrite > 0 {
		eopts.MaxWrite = opts.MaxWrite
	}
	fresh, err := checkAppendDir(dir, false)
	if err != nil {
		return err
	}
	l, err := createStore(dir, fresh, eopts)
	if err != nil {
		return flagError(err, map[string]string{"SegmentSize": "segment-size", "IndexInterval": "index-interval", "MaxWrite": "max-write"})
	}
	defer l.Close()
	fmt.Fprintf(out, "replicating %s (log %q) into %s from offset %d\n", leaderURL, opts.Name, dir, l.EndOffset())
	var last time.Time
	var latest peer.FollowStats
	write := func(s peer.FollowStats) {
		last = time.Now()
		st := ReplicationStatus{Leader: redacted(leaderURL), Name: opts.Name, Applied: s.Applied, Received: s.Received, LeaderEnd: s.LeaderEnd,
			Lag: s.LeaderEnd - min(s.Received, s.LeaderEnd), Staged: s.Staged, Imported: s.Imported, Steps: s.Steps, Failures: s.Failures,
			LastFailure: s.LastFailure, Updated: last.UTC()}
		if b, err := json.MarshalIndent(st, "", "  "); err == nil {
			tmp := filepath.Join(dir, replicationFile+".tmp") // .tmp: removed by a log open if left behind
			if os.WriteFile(tmp, b, 0o644) == nil {
				os.Rename(tmp, filepath.Join(dir, replicationFile))
			}
		}
	}
	// One line per failed step, without the time (a terminal or a
	// service manager's journal adds its own).
	// The cause in the command's terms (its flags, not the library's
	// options).
	warnings := slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		switch {
		case len(groups) == 0 && a.Key == slog.TimeKey:
			return slog.Attr{}
		case len(groups) == 0 && a.Key == "err":
			return slog.String("err", inReplicateTerms(a.Value.String()))
		}
		return a
	}}))
	ctx, caughtUp := context.WithCancel(ctx)
	defer caughtUp()
	err = peer.Follow(ctx, leaderURL, l, peer.FollowOptions{Name: opts.Name, Token: opts.Token, Wait: opts.Wait, ReadTimeout: opts.ReadTimeout, Logger: warnings,
		Progress: func(s peer.FollowStats) {
			latest = s
			if opts.UntilCaughtUp && s.Steps > 0 && s.Received >= s.LeaderEnd {
				caughtUp()
			}
			if time.Since(last) >= 200*time.Millisecond { // a status file, not a log: at most 5 writes a second
				write(s)
			}
		}})
	write(latest)
	if errors.Is(err, context.Canceled) {
		fmt.Fprintf(out, "stopped: the copy holds offsets [%d, %d), readable", l.StartOffset(), l.EndOffset())
		if latest.Staged > 0 {
			fmt.Fprintf(out, "; every record below %d is durable here (%d bytes of the leader's active segment staged: readable once the leader seals it, or after segtool promote)",
				latest.Received, latest.Staged)
		}
		fmt.Fprintf(out, "; leader at %d, lag %s; %s imported this run\n", latest.LeaderEnd,
			plural(int(latest.LeaderEnd-min(latest.Received, latest.LeaderEnd)), "record"), plural(latest.Imported, "segment"))
		if latest.Steps == 0 {
			return fmt.Errorf("never reached the leader %s for log %q, or every answer was refused: %s failed, the last with: %s", redacted(leaderURL), opts.Name, plural(latest.Failures, "attempt"), inReplicateTerms(latest.LastFailure))
		}
		return nil
	}
	return err
}

// replicateTerms says the follower's options, in the library's refusals,
// as replicate's flags.
var replicateTerms = strings.NewReplacer(
	"open it with MaxWrite at least", "give replicate --max-write at least",
	"open it with IndexInterval at least", "give replicate --index-interval at least",
	"open it with options at least the peer's", "give replicate --segment-size, --index-interval and --max-write at least the leader's",
	"open the follower with a SegmentSize at least the leader's", "give replicate a --segment-size at least the leader's",
	"(engine.Log.MaxImportSize)", "(set by --segment-size, --index-interval and --max-write)",
	"(FollowOptions.ReadTimeout)", "(--read-timeout)",
	"(FollowOptions.MaxListBytes)", "(segtool's bound on a leader's list)",
)

// inReplicateTerms is a follow step's error as replicate prints it.
func inReplicateTerms(s string) string { return tidy(replicateTerms.Replace(s)) }

// redacted is rawURL with any password replaced by "xxxxx".
func redacted(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		return u.Redacted()
	}
	return rawURL
}

// readReplication returns dir's replication status, if it is a follower.
func readReplication(dir string) *ReplicationStatus {
	b, err := os.ReadFile(filepath.Join(dir, replicationFile))
	if err != nil {
		return nil
	}
	var st ReplicationStatus
	if json.Unmarshal(b, &st) != nil {
		return nil
	}
	return &st
}

// PromoteReport is what Promote did.
type PromoteReport struct {
	Dir   string `json:"dir"`
	Added uint64 `json:"added_records"` // staged records that became the log's
	Start uint64 `json:"start"`
	End   uint64 `json:"end"` // the log's end offset after the promotion
	// Leader is the leader the directory followed, from REPLICATION.json
	// (which Promote removes: the directory is no longer a follower).
	Leader string `json:"leader,omitempty"`
}

// Promote makes the follower in dir a log of its own after its leader is
// lost: the records it received of the leader's active segment (staged,
// durable) become its active segment (peer.Promote), and it can be
// appended to. Run it with no replicate running on dir.
func Promote(out io.Writer, dir string, asJSON bool) error {
	if err := isStore(dir); err != nil {
		return err
	}
	_, errRep := os.Stat(filepath.Join(dir, replicationFile))
	_, errStage := os.Stat(filepath.Join(dir, peer.StageFile))
	if errors.Is(errRep, fs.ErrNotExist) && errors.Is(errStage, fs.ErrNotExist) {
		return usageError{fmt.Errorf("%s never followed a leader (it has no %s and nothing staged): it is already a log of its own; promote is for a copy made by segtool replicate", dir, replicationFile)}
	}
	l, err := openStore(dir, true)
	if err != nil {
		return err
	}
	defer l.Close()
	rep := PromoteReport{Dir: dir}
	if st := readReplication(dir); st != nil {
		rep.Leader = st.Leader
	}
	if rep.Added, err = peer.Promote(l); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(dir, replicationFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	rep.Start, rep.End = l.StartOffset(), l.EndOffset()
	if asJSON {
		return writeReport(out, rep)
	}
	fmt.Fprintf(out, "promoted %s: %d staged records of the leader's active segment are now its own; it holds offsets [%d, %d) and takes appends\n",
		dir, rep.Added, rep.Start, rep.End)
	return nil
}

func newPromoteCommand() *cobra.Command {
	return dirReportCommand("promote DIR", "Make a follower whose leader is lost a log of its own, with every record it received (run with replicate stopped)", Promote)
}

func newReplicateCommand() *cobra.Command {
	var o ReplicateOptions
	var tokenFile string
	var indexInterval, maxWrite int64
	cmd := &cobra.Command{
		Use:   "replicate URL DIR",
		Short: "Follow a served log into DIR: sealed segments byte for byte, then the tail; until interrupted",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 2 {
				return usageError{errors.New("want the leader's URL and the follower's directory")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.Token, err = resolveToken(cmd.ErrOrStderr(), o.Token, tokenFile); err != nil {
				return err
			}
			o.IndexInterval, o.MaxWrite = int(indexInterval), int(maxWrite)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Replicate(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], args[1], o)
		},
	}
	cmd.Flags().StringVar(&o.Name, "name", "", "the log's name on the leader (default: DIR's base name, bytes that are not UTF-8 written as \\xNN, as serve names it)")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token for the leader (or set "+tokenEnv+")")
	cmd.Flags().StringVar(&o.Token, "token", "", "bearer token for the leader (visible in ps: prefer --token-file or "+tokenEnv+")")
	cmd.Flags().DurationVar(&o.Wait, "wait", 10*time.Second, "long-poll wait for new records")
	cmd.Flags().BoolVar(&o.UntilCaughtUp, "until-caught-up", false, "exit once the copy holds, durably, every record the leader has acknowledged, instead of following")
	cmd.Flags().DurationVar(&o.ReadTimeout, "read-timeout", 30*time.Second, "a leader that does not connect, answer, or deliver each 256 KiB of a body within this fails the step, which is retried")
	sizeVar(cmd.Flags(), &o.SegmentSize, "segment-size", 64<<20, "the follower's segment size: the leader's segments must be no larger than the follower's own")
	sizeVar(cmd.Flags(), &indexInterval, "index-interval", 64<<10, "the follower's index interval: the leader's segment indexes must be no sparser")
	sizeVar(cmd.Flags(), &maxWrite, "max-write", 4<<20, "the follower's largest write: the leader's segments must allow no larger writes")
	bound(cmd, "1ms", "", "wait", "read-timeout")
	bound(cmd, "64KiB", "16GiB", "segment-size")
	bound(cmd, "512", "16MiB", "index-interval")
	bound(cmd, "16KiB", "64MiB", "max-write")
	return cmd
}
