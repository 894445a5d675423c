package tools

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
)

// NewRootCommand returns the segtool command tree writing to out and errOut.
func NewRootCommand(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "segtool",
		Short:         "segtool inspects, verifies and exercises segstore logs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })

	var qs QuickstartOptions
	quick := &cobra.Command{
		Use:   "quickstart",
		Short: "Write a log with concurrent durable appenders, reopen it, and read every record back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Quickstart(cmd.OutOrStdout(), qs)
		},
	}
	quick.Flags().StringVar(&qs.Dir, "dir", "", "directory for the store (default: a new temporary directory)")
	quick.Flags().IntVar(&qs.Appenders, "appenders", 8, "concurrent appenders")
	quick.Flags().IntVar(&qs.Appends, "appends", 2000, "Append calls per appender")
	quick.Flags().IntVar(&qs.Batch, "batch", 4, "records per Append")
	quick.Flags().IntVar(&qs.RecordSize, "record-size", 1024, "bytes per record (at least 16)")
	quick.Flags().Int64Var(&qs.SegmentSize, "segment-size", 16<<20, "bytes per segment file")
	quick.Flags().IntVar(&qs.Reads, "reads", 20000, "random point reads")
	quick.Flags().BoolVar(&qs.JSON, "json", false, "print one JSON document instead of text")
	root.AddCommand(quick)
	root.AddCommand(newBenchCommand())
	root.AddCommand(newAppendCommand(), newCatCommand(), newInspectCommand(), newVerifyCommand(errOut), newRepairCommand(), newDumpCommand(),
		newServeCommand(), newReplicateCommand(), newPromoteCommand())
	return root
}

// oneDir accepts exactly one argument, the store's directory.
func oneDir(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageError{fmt.Errorf("want one argument, the store's directory; got %d", len(args))}
	}
	return nil
}

func newAppendCommand() *cobra.Command {
	var o AppendOptions
	cmd := &cobra.Command{
		Use:   "append DIR [FILE...]",
		Short: "Append records from stdin or files (one per line, or length-prefixed with --binary); print their offsets",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{errors.New("want the store's directory, then optional input files")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			inputs := []io.Reader{cmd.InOrStdin()}
			if len(args) > 1 {
				inputs = nil
				for _, name := range args[1:] {
					f, err := os.Open(name)
					if err != nil {
						return err
					}
					defer f.Close()
					inputs = append(inputs, f)
				}
			}
			return Append(cmd.OutOrStdout(), args[0], inputs, o)
		},
	}
	cmd.Flags().BoolVar(&o.Binary, "binary", false, "records are a uint32 little-endian length and that many bytes")
	cmd.Flags().IntVar(&o.Batch, "batch", 64, "records per append (one durable commit)")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print {\"offset\": N} lines")
	return cmd
}

func newCatCommand() *cobra.Command {
	var o CatOptions
	var since string
	cmd := &cobra.Command{
		Use:   "cat DIR",
		Short: "Print records from an offset or a time, as text, hex or JSON",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			if since != "" {
				var err error
				if o.At, err = parseSince(since, time.Now()); err != nil {
					return err
				}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Cat(ctx, cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().Int64Var(&o.From, "from", -1, "first offset (default: the log's start)")
	cmd.Flags().StringVar(&since, "since", "", "start at records appended since a duration ago (10m) or an RFC 3339 time")
	cmd.Flags().IntVar(&o.Count, "count", 0, "records to print (default: all)")
	cmd.Flags().StringVar(&o.Format, "format", "text", "text, hex or json")
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "at the end, wait for new records (until interrupted or --count)")
	cmd.Flags().DurationVar(&o.Poll, "poll", 250*time.Millisecond, "with --follow, look for new records as the files change and at least this often")
	return cmd
}

func newInspectCommand() *cobra.Command {
	return dirReportCommand("inspect DIR", "Show segments, totals, what opening found, and health warnings (read-only)", Inspect)
}

// dirReportCommand is a command on one store directory whose only flag
// is --json.
func dirReportCommand(use, short string, run func(out io.Writer, dir string, asJSON bool) error) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(cmd.OutOrStdout(), args[0], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON document")
	return cmd
}

func newVerifyCommand(errOut io.Writer) *cobra.Command {
	var o VerifyOptions
	var quiet bool
	cmd := &cobra.Command{
		Use:   "verify DIR",
		Short: "Check every checksum, footer and index entry; exit 0 clean, 1 damage, 2 usage error",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f, ok := errOut.(*os.File); ok && !quiet && term.IsTerminal(int(f.Fd())) {
				o.Progress = errOut
			}
			return Verify(cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print one JSON document")
	cmd.Flags().BoolVar(&quiet, "quiet", false, "no progress bar")
	return cmd
}

func newBenchCommand() *cobra.Command {
	bench := &cobra.Command{Use: "bench", Short: "Benchmarks of the store's paths"}
	var eo ExportBenchOptions
	var size string
	export := &cobra.Command{
		Use:   "export",
		Short: "Send one sealed segment over loopback TCP by read+write, sendfile, splice and mmap+write, and compare them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := parseSize(size)
			if err != nil {
				return usageError{err}
			}
			eo.Size = n
			_, err = ExportBench(cmd.OutOrStdout(), eo)
			return err
		},
	}
	export.Flags().StringVar(&size, "size", "1GiB", "bytes of records in the segment (units: KiB, MiB, GiB)")
	export.Flags().BoolVar(&eo.Pin, "pin", false, "pin the sender to CPU 0 and the receiver to CPU 1")
	export.Flags().BoolVar(&eo.Cold, "cold", false, "drop the page cache before each path (root only)")
	export.Flags().BoolVar(&eo.JSON, "json", false, "print one JSON document")
	export.Flags().IntVar(&eo.Runs, "runs", 3, "rounds over all paths, interleaved; figures are medians")
	export.Flags().StringVar(&eo.Dir, "dir", "", "directory to build the segment in (default: a new temporary directory)")
	bench.AddCommand(export)

	var bo BenchOptions
	var segSize, cacheSize string
	common := func(cmd *cobra.Command) {
		cmd.Flags().StringVar(&bo.Dir, "dir", "", "store directory (default: a new temporary directory, removed after)")
		cmd.Flags().IntVar(&bo.RecordSize, "record-size", 1024, "bytes per record")
		cmd.Flags().IntVar(&bo.Batch, "batch", 16, "records per Append")
		cmd.Flags().IntVar(&bo.Workers, "workers", 4, "concurrent appenders or readers")
		cmd.Flags().StringVar(&bo.Sync, "sync", "always", "always, interval or never")
		cmd.Flags().DurationVar(&bo.Duration, "duration", 5*time.Second, "how long to run")
		cmd.Flags().StringVar(&segSize, "segment-size", "64MiB", "segment file size")
		cmd.Flags().BoolVar(&bo.JSON, "json", false, "print one JSON document")
	}
	sizes := func() error {
		var err error
		if bo.SegmentSize, err = parseSize(segSize); err != nil {
			return usageError{err}
		}
		if cacheSize != "" {
			if bo.CacheBytes, err = parseSize(cacheSize); err != nil {
				return usageError{err}
			}
		}
		return nil
	}
	appendCmd := &cobra.Command{
		Use:   "append",
		Short: "Durable appends from concurrent appenders: throughput, latency, group commit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sizes(); err != nil {
				return err
			}
			_, err := BenchAppend(cmd.OutOrStdout(), bo)
			return err
		},
	}
	common(appendCmd)
	readCmd := &cobra.Command{
		Use:   "read",
		Short: "Random point reads (uniform or Zipf) from concurrent readers over a store of two segments, then a scan",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := sizes(); err != nil {
				return err
			}
			_, err := BenchRead(cmd.OutOrStdout(), bo)
			return err
		},
	}
	common(readCmd)
	readCmd.Flags().StringVar(&bo.Dist, "dist", "uniform", "uniform or zipf")
	readCmd.Flags().StringVar(&cacheSize, "cache", "64MiB", "cache budget")
	bench.AddCommand(appendCmd, readCmd)
	return bench
}

// parseSize parses a byte count with an optional KiB, MiB or GiB suffix.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mul    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n <= 0 || n > math.MaxInt64/u.mul {
				return 0, fmt.Errorf("size %q: want a positive number of bytes below 8 EiB, with an optional KiB, MiB or GiB suffix", s)
			}
			return n * u.mul, nil
		}
	}
	panic("unreachable: the empty suffix matches")
}

func newRepairCommand() *cobra.Command {
	var o RepairOptions
	cmd := &cobra.Command{
		Use:   "repair DIR",
		Short: "Say how damage a crash explains would be repaired; with --apply, keep the damaged files aside and repair",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			return Repair(cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().BoolVar(&o.Apply, "apply", false, "make the repairs (default: a dry run)")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print one JSON document")
	return cmd
}

func newDumpCommand() *cobra.Command {
	var o DumpOptions
	var since string
	cmd := &cobra.Command{
		Use:   "dump DIR",
		Short: "Show segment headers, frames (positions, sizes, checksums, batch boundaries) and footers",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			if since != "" {
				at, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				if o.From, err = offsetAt(args[0], at); err != nil {
					return err
				}
			}
			return Dump(cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "start at the frame of the first record appended since a duration ago (10m) or an RFC 3339 time")
	cmd.Flags().Int64Var(&o.From, "from", -1, "start at the frame holding this offset (default: the first)")
	cmd.Flags().IntVar(&o.Frames, "count", 0, "frames to show (default: all)")
	cmd.Flags().BoolVar(&o.Records, "records", false, "show each frame's records (text, cut at 64 bytes)")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "one JSON object per line")
	return cmd
}

// parseSince reads --since: a duration before now, or an RFC 3339 time.
func parseSince(since string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(since); err == nil {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, since); err == nil {
		return t, nil
	}
	return time.Time{}, usageError{fmt.Errorf("--since %q: want a duration (10m) or an RFC 3339 time", since)}
}

func newServeCommand() *cobra.Command {
	var o ServeOptions
	var tokenFile string
	cmd := &cobra.Command{
		Use:   "serve DIR...",
		Short: "Serve logs to peers over HTTP (segments by sendfile, tail, metrics), beside their writer or as it",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{errors.New("want one or more store directories")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.Token, err = resolveToken(cmd.ErrOrStderr(), o.Token, tokenFile); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Serve(ctx, cmd.OutOrStdout(), args, o, nil)
		},
	}
	cmd.Flags().StringVar(&o.Listen, "listen", "127.0.0.1:7070", "address to listen on")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token clients must send (or set "+tokenEnv+"); without one, only loopback clients asking for a loopback host name are served")
	cmd.Flags().StringVar(&o.Token, "token", "", "bearer token clients must send (visible in ps: prefer --token-file or "+tokenEnv+")")
	cmd.Flags().BoolVar(&o.AllowRemote, "allow-remote", false, "serve non-loopback clients without a token")
	cmd.Flags().StringArrayVar(&o.AllowedHosts, "allow-host", nil, "without a token, also serve requests for this host name (besides localhost and loopback addresses); repeatable")
	cmd.Flags().IntVar(&o.MaxExports, "max-exports", 64, "segment and tail bodies sent at once; more get 503 with Retry-After")
	cmd.Flags().DurationVar(&o.WriteTimeout, "write-timeout", 30*time.Second, "a client must take each MiB of a body within this, or it is cut off and its export slot freed")
	cmd.Flags().Int64Var(&o.RateLimit, "rate-limit", 0, "bytes per second per response (0: unlimited)")
	cmd.Flags().StringVar(&o.TLSCert, "tls-cert", "", "PEM certificate: serve HTTPS (with --tls-key)")
	cmd.Flags().StringVar(&o.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	cmd.Flags().DurationVar(&o.Refresh, "refresh", 250*time.Millisecond, "a log another process writes is looked at as its files change, and at least this often")
	return cmd
}

func newPromoteCommand() *cobra.Command {
	return dirReportCommand("promote DIR", "Make a follower whose leader is lost a log of its own, with every record it received (run with replicate stopped)", Promote)
}

func newReplicateCommand() *cobra.Command {
	var o ReplicateOptions
	var tokenFile string
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
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Replicate(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], args[1], o)
		},
	}
	cmd.Flags().StringVar(&o.Name, "name", "", "the log's name on the leader (default: DIR's base name, bytes that are not UTF-8 written as \\xNN, as serve names it)")
	cmd.Flags().StringVar(&tokenFile, "token-file", "", "file holding the bearer token for the leader (or set "+tokenEnv+")")
	cmd.Flags().StringVar(&o.Token, "token", "", "bearer token for the leader (visible in ps: prefer --token-file or "+tokenEnv+")")
	cmd.Flags().DurationVar(&o.Wait, "wait", 10*time.Second, "long-poll wait for new records")
	cmd.Flags().DurationVar(&o.ReadTimeout, "read-timeout", 30*time.Second, "a leader that does not connect, answer, or deliver each 256 KiB of a body within this fails the step, which is retried")
	cmd.Flags().Int64Var(&o.SegmentSize, "segment-size", 64<<20, "the follower's segment size in bytes: the leader's segments must be no larger than the follower's own")
	cmd.Flags().IntVar(&o.IndexInterval, "index-interval", 64<<10, "the follower's index interval in bytes: the leader's segment indexes must be no sparser")
	cmd.Flags().IntVar(&o.MaxWrite, "max-write", 4<<20, "the follower's largest write in bytes: the leader's segments must allow no larger writes")
	return cmd
}
