package tools

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/segstore/segstore/wal"
)

// NewRootCommand returns the segtool command tree writing to out and errOut.
func NewRootCommand(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "segtool",
		Short: "segtool inspects, verifies and exercises segstore logs",
		Long: "segtool inspects, verifies, repairs, serves and replicates segstore logs, and benchmarks them.\n\n" +
			"Commands that only read (cat, dump, inspect, verify, serve --read-only) open a store without its lock,\n" +
			"beside a live writer. Every command that prints data has --json.\n\n" + exitStatusHelp(),
		Version:           version(),
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return validateFlags(cmd) },
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetVersionTemplate("segtool {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().Bool("verbose", false, "on failure, print the whole chain of causes")
	root.AddCommand(newQuickstartCommand(), newBenchCommand())
	root.AddCommand(newAppendCommand(), newCatCommand(), newInspectCommand(), newVerifyCommand(errOut), newRepairCommand(), newDumpCommand(),
		newServeCommand(), newReplicateCommand(), newPromoteCommand())
	// An unknown command is a usage error too.
	root.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q", args[0])}
		}
		return nil
	}
	root.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	return root
}

// exitStatusHelp is the exit status table of segtool --help.
func exitStatusHelp() string {
	var b strings.Builder
	b.WriteString("Exit status (every command):\n")
	for _, e := range exitStatuses {
		fmt.Fprintf(&b, "  %3d  %s\n", e.Code, e.Meaning)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// version is segtool's version: the module version and VCS revision it
// was built from, its Go toolchain, and the newest wal format it reads.
func version() string {
	v, rev, dirty := "(devel)", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && len(s.Value) >= 12:
				rev = " commit " + s.Value[:12]
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = " (modified)"
			}
		}
	}
	return fmt.Sprintf("%s%s%s, %s %s/%s, wal format %d", v, rev, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH, wal.Version)
}

func newQuickstartCommand() *cobra.Command {
	var qs QuickstartOptions
	quick := &cobra.Command{
		Use:   "quickstart",
		Short: "Write a log with concurrent durable appenders, reopen it, read every record back, export and replicate it",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Quickstart(cmd.OutOrStdout(), qs)
		},
	}
	quick.Flags().StringVar(&qs.Dir, "dir", "", "directory for the store, new or empty, kept after (default: a new temporary directory, removed after unless --keep)")
	quick.Flags().BoolVar(&qs.Keep, "keep", false, "keep the temporary store and its replica")
	quick.Flags().IntVar(&qs.Appenders, "appenders", 8, "concurrent appenders")
	quick.Flags().IntVar(&qs.Appends, "appends", 2000, "Append calls per appender")
	quick.Flags().IntVar(&qs.Batch, "batch", 4, "records per Append")
	quick.Flags().IntVar(&qs.RecordSize, "record-size", 1024, "bytes per record")
	sizeVar(quick.Flags(), &qs.SegmentSize, "segment-size", 16<<20, "segment file size")
	quick.Flags().IntVar(&qs.Reads, "reads", 20000, "random point reads")
	quick.Flags().BoolVar(&qs.JSON, "json", false, "print one JSON document instead of text")
	bound(quick, "1", "", "appenders", "appends", "batch")
	bound(quick, "16", "65536", "record-size")
	bound(quick, "0", "", "reads")
	bound(quick, "64KiB", "16GiB", "segment-size")
	return quick
}

// noArgs refuses arguments, as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args[0])}
	}
	return nil
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
		Short: "Append records from stdin or files (one per line, or length-prefixed with --binary); print their offsets as they are durable",
		Long: "Append records from stdin or files to the store in DIR, creating it if DIR is missing or empty (or, with --create,\n" +
			"a directory that holds other files). Records are committed in batches: a batch is appended (durable, one fdatasync)\n" +
			"when it holds --batch records, when --flush-interval has passed since its first record, when the next record\n" +
			"would not fit in one write, and at the end of the input. Each record's offset is printed once it is durable.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{errors.New("want the store's directory, then optional input files")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			inputs := []namedReader{{"stdin", cmd.InOrStdin()}}
			if len(args) > 1 {
				inputs = nil
				for _, name := range args[1:] {
					f, err := os.Open(name)
					if err != nil {
						return usageError{fmt.Errorf("input file: %w", err)}
					}
					defer f.Close()
					inputs = append(inputs, namedReader{name, f})
				}
			}
			return Append(cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], inputs, o)
		},
	}
	cmd.Flags().BoolVar(&o.Binary, "binary", false, "records are a uint32 little-endian length and that many bytes")
	cmd.Flags().IntVar(&o.Batch, "batch", 64, "most records per append (one durable commit)")
	cmd.Flags().DurationVar(&o.FlushInterval, "flush-interval", 100*time.Millisecond, "longest a record waits for its batch to fill before it is appended")
	cmd.Flags().BoolVar(&o.Create, "create", false, "make DIR a store even if it holds other files")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print {\"offset\": N} lines")
	bound(cmd, "1", "", "batch")
	bound(cmd, "1ms", "", "flush-interval")
	return cmd
}

func newCatCommand() *cobra.Command {
	var o CatOptions
	var since string
	cmd := &cobra.Command{
		Use:   "cat DIR",
		Short: "Print records from an offset or a time, as text (with offsets), raw, hex or JSON",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := startFlags(cmd, since, &o.From, &o.At); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Cat(ctx, cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().Int64Var(&o.From, "from", 0, "first offset (default: the log's start)")
	cmd.Flags().StringVar(&since, "since", "", "start at records appended since a duration ago (10m) or an RFC 3339 time")
	cmd.Flags().IntVar(&o.Count, "count", 0, "records to print (default: all)")
	cmd.Flags().StringVar(&o.Format, "format", "text", "text (offset, tab, record), raw (the record alone), hex or json")
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "at the end, wait for new records (until interrupted or --count)")
	cmd.Flags().DurationVar(&o.Poll, "poll", 250*time.Millisecond, "with --follow, look for new records as the files change and at least this often")
	bound(cmd, "0", "", "from")
	bound(cmd, "1", "", "count")
	bound(cmd, "1ms", "", "poll")
	return cmd
}

// startFlags reads --from and --since, which say where cat and dump
// start: from is -1 (the log's start) unless --from is given, and at is
// set from --since. The two do not go together.
func startFlags(cmd *cobra.Command, since string, from *int64, at *time.Time) error {
	fromSet := cmd.Flags().Changed("from")
	if fromSet && since != "" {
		return usageError{errors.New("--from and --since: give one start")}
	}
	if !fromSet {
		*from = -1
	}
	if since != "" {
		var err error
		if *at, err = parseSince(since, time.Now()); err != nil {
			return err
		}
	}
	return nil
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
		Short: "Check every checksum, footer and index entry; exit 0 clean, 1 damage",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f, ok := errOut.(*os.File); ok && !quiet && term.IsTerminal(int(f.Fd())) {
				o.Progress = errOut
			}
			o.Verbose, _ = cmd.Flags().GetBool("verbose")
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Verify(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], o)
		},
	}
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print one JSON document")
	cmd.Flags().BoolVar(&quiet, "quiet", false, "no progress bar")
	return cmd
}

func newBenchCommand() *cobra.Command {
	bench := &cobra.Command{Use: "bench", Short: "Benchmarks of the store's paths", Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{errors.New("want a benchmark: append, read or export")}
		}}
	var eo ExportBenchOptions
	export := &cobra.Command{
		Use:   "export",
		Short: "Send one sealed segment over loopback TCP by read+write, sendfile, splice and mmap+write, and compare them",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return interruptible(ctx, func() error { _, err := ExportBench(cmd.OutOrStdout(), eo); return err })
		},
	}
	sizeVar(export.Flags(), &eo.Size, "size", 1<<30, "bytes of records in the segment")
	export.Flags().BoolVar(&eo.Pin, "pin", false, "pin the sender to CPU 0 and the receiver to CPU 1")
	export.Flags().BoolVar(&eo.Cold, "cold", false, "drop the page cache before each path (root only)")
	export.Flags().BoolVar(&eo.JSON, "json", false, "print one JSON document")
	export.Flags().IntVar(&eo.Runs, "runs", 3, "rounds over all paths, interleaved; figures are medians")
	export.Flags().StringVar(&eo.Dir, "dir", "", "directory to build the segment in (default: a new temporary directory, removed after)")
	bound(export, "1", "", "runs")
	bound(export, "64KiB", "", "size")
	bench.AddCommand(export)

	var bo BenchOptions
	common := func(cmd *cobra.Command) {
		cmd.Flags().StringVar(&bo.Dir, "dir", "", "store directory (default: a new temporary directory, removed after)")
		cmd.Flags().IntVar(&bo.RecordSize, "record-size", 1024, "bytes per record")
		cmd.Flags().IntVar(&bo.Batch, "batch", 16, "records per Append")
		cmd.Flags().IntVar(&bo.Workers, "workers", 4, "concurrent appenders or readers")
		cmd.Flags().StringVar(&bo.Sync, "sync", "always", "always, interval or never")
		cmd.Flags().DurationVar(&bo.Duration, "duration", 5*time.Second, "how long to run")
		sizeVar(cmd.Flags(), &bo.SegmentSize, "segment-size", 64<<20, "segment file size")
		cmd.Flags().BoolVar(&bo.JSON, "json", false, "print one JSON document")
		bound(cmd, "1", "", "batch")
		bound(cmd, "1", "1024", "workers")
		bound(cmd, "1", strconv.Itoa(wal.MaxRecordSize), "record-size")
		bound(cmd, "1ms", "", "duration")
		bound(cmd, "64KiB", "16GiB", "segment-size")
	}
	run := func(f func(io.Writer) error) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return interruptible(ctx, func() error { return f(cmd.OutOrStdout()) })
		}
	}
	appendCmd := &cobra.Command{
		Use:   "append",
		Short: "Durable appends from concurrent appenders: throughput, latency, group commit",
		Args:  noArgs,
		RunE:  run(func(out io.Writer) error { _, err := BenchAppend(out, bo); return err }),
	}
	common(appendCmd)
	readCmd := &cobra.Command{
		Use:   "read",
		Short: "Random point reads (uniform or Zipf) from concurrent readers over a store of two segments, then a scan",
		Args:  noArgs,
		RunE:  run(func(out io.Writer) error { _, err := BenchRead(out, bo); return err }),
	}
	common(readCmd)
	readCmd.Flags().StringVar(&bo.Dist, "dist", "uniform", "uniform or zipf")
	sizeVar(readCmd.Flags(), &bo.CacheBytes, "cache", 64<<20, "cache budget")
	bound(readCmd, "64KiB", "", "cache")
	bench.AddCommand(appendCmd, readCmd)
	return bench
}

// interruptible runs f until it returns or ctx is done (Ctrl-C): then it
// returns errInterrupted at once, leaving f to end with the process.
func interruptible(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return errInterrupted
	}
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
			var at time.Time
			if err := startFlags(cmd, since, &o.From, &at); err != nil {
				return err
			}
			if !at.IsZero() {
				var err error
				if o.From, err = offsetAt(args[0], at); err != nil {
					return err
				}
			}
			return Dump(cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "start at the frame of the first record appended since a duration ago (10m) or an RFC 3339 time")
	cmd.Flags().Int64Var(&o.From, "from", 0, "start at the frame holding this offset (default: the first frame)")
	cmd.Flags().IntVar(&o.Frames, "count", 0, "frames to show (default: all)")
	cmd.Flags().BoolVar(&o.Records, "records", false, "show each frame's records (text cut at 64 bytes; with --json, each record in full)")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "one JSON object per line")
	bound(cmd, "0", "", "from")
	bound(cmd, "1", "", "count")
	return cmd
}

// parseSince reads --since: a duration before now, or an RFC 3339 time.
func parseSince(since string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(since); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, since); err == nil {
		return t, nil
	}
	return time.Time{}, usageError{fmt.Errorf("--since %q: want a positive duration (10m) or an RFC 3339 time", since)}
}

func newServeCommand() *cobra.Command {
	var o ServeOptions
	var tokenFile string
	cmd := &cobra.Command{
		Use:   "serve DIR...",
		Short: "Serve logs to peers over HTTP (segments by sendfile, tail, metrics), beside their writer or as it",
		Long: "Serve each store directory over HTTP as a log named by the directory's base name, until interrupted.\n" +
			"A store that another process writes is served read-only and refreshed as its files change; one that no\n" +
			"process writes is opened for writing (this process becomes its writer, and appends from other processes are\n" +
			"refused while it runs) unless --read-only is given: then nothing is written, a writer may start beside it,\n" +
			"and a store on a read-only mount can be served.",
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
	cmd.Flags().BoolVar(&o.ReadOnly, "read-only", false, "never become a store's writer: serve it read-only, refreshed, even when no other process writes it")
	cmd.Flags().IntVar(&o.MaxExports, "max-exports", 64, "segment and tail bodies sent at once; more get 503 with Retry-After")
	cmd.Flags().DurationVar(&o.WriteTimeout, "write-timeout", 30*time.Second, "a client must take each MiB of a body within this, or it is cut off and its export slot freed")
	sizeVar(cmd.Flags(), &o.RateLimit, "rate-limit", 0, "bytes per second per response (0: unlimited)")
	cmd.Flags().StringVar(&o.TLSCert, "tls-cert", "", "PEM certificate: serve HTTPS (with --tls-key)")
	cmd.Flags().StringVar(&o.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	cmd.Flags().DurationVar(&o.Refresh, "refresh", 250*time.Millisecond, "a log another process writes is looked at as its files change, and at least this often")
	bound(cmd, "1", "", "max-exports")
	bound(cmd, "1ms", "", "write-timeout", "refresh")
	bound(cmd, "0", "", "rate-limit")
	return cmd
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
