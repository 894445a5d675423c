package cli

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
)

// BenchOptions configure the append and read benchmarks.
type BenchOptions struct {
	Dir         string        `json:"dir"`         // store directory; default a new temporary one (removed after)
	RecordSize  int           `json:"record_size"` // bytes per record; default 1024
	Batch       int           `json:"batch"`       // records per Append; default 16
	Workers     int           `json:"workers"`     // concurrent appenders or readers; default 4
	Sync        string        `json:"sync"`        // always, interval or never; default always
	Duration    time.Duration `json:"duration_ns"` // how long to run; default 5s
	SegmentSize int64         `json:"segment_size"`
	Dist        string        `json:"dist,omitempty"`        // reads: uniform or zipf; default uniform
	CacheBytes  int64         `json:"cache_bytes,omitempty"` // reads: cache budget; default 64 MiB
	JSON        bool          `json:"-"`
}

// BenchEnv is where a benchmark ran: figures mean little without it.
type BenchEnv struct {
	Host       string `json:"host"`
	Kernel     string `json:"kernel"`
	CPUs       int    `json:"cpus"`
	Go         string `json:"go"`
	Filesystem string `json:"filesystem"` // of the store, as the log saw it
	Direct     bool   `json:"direct"`     // O_DIRECT (false: the buffered fallback)
	// LoadBefore and LoadAfter are the 1-minute load averages
	// (/proc/loadavg) when the run began and ended: a loaded machine
	// explains slow figures.
	LoadBefore float64   `json:"load_before"`
	LoadAfter  float64   `json:"load_after"`
	Started    time.Time `json:"started"`
}

// benchEnv describes this machine and the log's storage now.
func benchEnv(l *engine.Log) BenchEnv {
	e := BenchEnv{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadBefore: loadAverage(), Started: time.Now().UTC()}
	e.Host, _ = os.Hostname()
	e.Kernel = kernelRelease()
	st := l.Storage()
	e.Filesystem, e.Direct = st.Filesystem, st.Direct
	return e
}

// loadAverage is the 1-minute load average; 0 if unknown.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b) + " 0")[0], 64)
	return f
}

func (o *BenchOptions) defaults() error {
	if o.RecordSize <= 0 {
		o.RecordSize = 1024
	}
	if o.Batch <= 0 {
		o.Batch = 16
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.SegmentSize <= 0 {
		o.SegmentSize = 64 << 20
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = 64 << 20
	}
	switch o.Sync {
	case "", "always", "interval", "never":
	default:
		return usageError{fmt.Errorf("--sync %q: want always, interval or never", o.Sync)}
	}
	switch o.Dist {
	case "", "uniform", "zipf":
	default:
		return usageError{fmt.Errorf("--dist %q: want uniform or zipf", o.Dist)}
	}
	return nil
}

// BenchResult is one benchmark's figures.
type BenchResult struct {
	Op         string  `json:"op"`
	Ops        int64   `json:"ops"` // appends or reads
	Records    int64   `json:"records"`
	Seconds    float64 `json:"seconds"`
	OpsPerSec  float64 `json:"ops_per_s"`
	RecsPerSec float64 `json:"records_per_s"`
	MBPerSec   float64 `json:"mb_per_s"`
	P50us      float64 `json:"p50_us"`
	P99us      float64 `json:"p99_us"`
	Syncs      int64   `json:"fsyncs,omitempty"`
	MeanBatch  float64 `json:"appends_per_flush,omitempty"`
	MeanSyncUs float64 `json:"mean_fsync_us,omitempty"`
	HitRatio   float64 `json:"cache_hit_ratio,omitempty"`
}

// benchStore opens the benchmark's store, in a temporary directory unless
// one is given; done closes it (and removes a temporary directory).
func benchStore(o BenchOptions) (l *engine.Log, done func() error, err error) {
	dir := o.Dir
	cleanup := func() error { return nil }
	if dir == "" {
		d, err := os.MkdirTemp("", "segtool-bench-")
		if err != nil {
			return nil, nil, err
		}
		dir, cleanup = d, func() error { return os.RemoveAll(d) }
	}
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.CacheBytes, opts.Logger = o.SegmentSize, o.CacheBytes, quietLogger
	opts.SyncMode = map[string]engine.SyncMode{"": engine.SyncAlways, "always": engine.SyncAlways,
		"interval": engine.SyncInterval, "never": engine.SyncNever}[o.Sync]
	if l, err = engine.Open(dir, opts); err != nil {
		cleanup()
		return nil, nil, flagError(err, map[string]string{"SegmentSize": "segment-size", "CacheBytes": "cache"})
	}
	return l, func() error { err := l.Close(); cleanup(); return err }, nil
}

// percentile returns the p-th percentile of sorted latencies in µs.
func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	return float64(sorted[min(len(sorted)-1, int(p*float64(len(sorted))))].Nanoseconds()) / 1e3
}

// run calls op from o.Workers goroutines until o.Duration has passed and
// returns the operations' latencies, sorted, and the time taken.
func run(workers int, d time.Duration, op func(worker int, i int) error) ([]time.Duration, time.Duration, error) {
	lat := make([][]time.Duration, workers)
	errs := make([]error, workers)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				t := time.Now()
				if errs[w] = op(w, i); errs[w] != nil {
					return
				}
				lat[w] = append(lat[w], time.Since(t))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := slices.Concat(lat...)
	slices.Sort(all)
	for _, err := range errs {
		if err != nil {
			return nil, 0, err
		}
	}
	return all, elapsed, nil
}

// BenchAppend appends batches from concurrent appenders for a while and
// reports throughput, latency and group commit.
func BenchAppend(out io.Writer, o BenchOptions) (BenchResult, error) {
	if err := o.defaults(); err != nil {
		return BenchResult{}, err
	}
	l, done, err := benchStore(o)
	if err != nil {
		return BenchResult{}, err
	}
	env := benchEnv(l)
	batches := make([][][]byte, o.Workers)
	for w := range batches {
		batches[w] = make([][]byte, o.Batch)
		for i := range batches[w] {
			batches[w][i] = make([]byte, o.RecordSize)
			for j := range batches[w][i] {
				batches[w][i][j] = byte(w + i + j)
			}
		}
	}
	lat, elapsed, err := run(o.Workers, o.Duration, func(w, _ int) error {
		_, err := l.Append(batches[w]...)
		return err
	})
	st := l.Stats()
	if cerr := done(); err == nil {
		err = cerr
	}
	if err != nil {
		return BenchResult{}, err
	}
	r := BenchResult{Op: "append", Ops: int64(len(lat)), Records: int64(len(lat) * o.Batch), Seconds: elapsed.Seconds(),
		P50us: percentile(lat, 0.5), P99us: percentile(lat, 0.99), Syncs: st.Syncs, MeanBatch: st.MeanBatch,
		MeanSyncUs: float64(st.MeanSync.Nanoseconds()) / 1e3}
	r.rates(o.RecordSize)
	env.LoadAfter = loadAverage()
	return r, printBench(out, o, env, r)
}

// BenchRead fills a store with about SegmentSize*2 bytes, then reads
// random records (uniform or Zipf) from concurrent readers for a while,
// then scans it all once.
func BenchRead(out io.Writer, o BenchOptions) ([]BenchResult, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	syncMode := o.Sync
	o.Sync = "never" // the fill; reads do not depend on it
	l, done, err := benchStore(o)
	o.Sync = syncMode
	if err != nil {
		return nil, err
	}
	defer done()
	env := benchEnv(l)
	rec := make([][]byte, o.Batch)
	for i := range rec {
		rec[i] = make([]byte, o.RecordSize)
	}
	for written := int64(0); written < 2*o.SegmentSize; written += int64(o.Batch * o.RecordSize) {
		if _, err := l.Append(rec...); err != nil {
			return nil, err
		}
	}
	if err := l.Sync(); err != nil {
		return nil, err
	}
	n := l.EndOffset()
	pick := make([]func() uint64, o.Workers)
	for w := range pick {
		r := rand.New(rand.NewPCG(uint64(w), 7))
		if o.Dist == "zipf" {
			z := rand.NewZipf(r, 1.1, 1, n-1)
			pick[w] = z.Uint64
		} else {
			pick[w] = func() uint64 { return r.Uint64N(n) }
		}
	}
	bufs := make([][]byte, o.Workers)
	lat, elapsed, err := run(o.Workers, o.Duration, func(w, _ int) error {
		var err error
		bufs[w], err = l.Read(pick[w](), bufs[w][:0])
		return err
	})
	if err != nil {
		return nil, err
	}
	dist := o.Dist
	if dist == "" {
		dist = "uniform"
	}
	reads := BenchResult{Op: "read-" + dist, Ops: int64(len(lat)), Records: int64(len(lat)),
		Seconds: elapsed.Seconds(), P50us: percentile(lat, 0.5), P99us: percentile(lat, 0.99), HitRatio: l.Stats().Cache.HitRatio()}
	reads.rates(o.RecordSize)

	start := time.Now()
	it := l.NewIterator(0)
	var scanned int64
	for it.Next() {
		scanned++
	}
	it.Close()
	if it.Err() != nil {
		return nil, it.Err()
	}
	scan := BenchResult{Op: "scan", Ops: 1, Records: scanned, Seconds: time.Since(start).Seconds()}
	scan.rates(o.RecordSize)
	results := []BenchResult{reads, scan}
	env.LoadAfter = loadAverage()
	return results, printBench(out, o, env, results...)
}

func (r *BenchResult) rates(recordSize int) {
	r.OpsPerSec = float64(r.Ops) / r.Seconds
	r.RecsPerSec = float64(r.Records) / r.Seconds
	r.MBPerSec = float64(r.Records) * float64(recordSize) / r.Seconds / 1e6
}

// benchColumns are the columns of one kind of result: appends, point
// reads, scans.
var benchColumns = map[string][]struct {
	head string
	cell func(BenchResult) string
}{
	"append": {{"ops/s", func(r BenchResult) string { return fmt.Sprintf("%.0f", r.OpsPerSec) }},
		{"records/s", func(r BenchResult) string { return fmt.Sprintf("%.0f", r.RecsPerSec) }},
		{"MB/s", func(r BenchResult) string { return fmt.Sprintf("%.1f", r.MBPerSec) }},
		{"p50 µs", func(r BenchResult) string { return fmt.Sprintf("%.1f", r.P50us) }},
		{"p99 µs", func(r BenchResult) string { return fmt.Sprintf("%.1f", r.P99us) }},
		{"fsyncs", func(r BenchResult) string { return fmt.Sprint(r.Syncs) }},
		{"appends/flush", func(r BenchResult) string { return fmt.Sprintf("%.1f", r.MeanBatch) }},
		{"mean fsync µs", func(r BenchResult) string { return fmt.Sprintf("%.0f", r.MeanSyncUs) }}},
	"read": {{"reads/s", func(r BenchResult) string { return fmt.Sprintf("%.0f", r.OpsPerSec) }},
		{"MB/s", func(r BenchResult) string { return fmt.Sprintf("%.1f", r.MBPerSec) }},
		{"p50 µs", func(r BenchResult) string { return fmt.Sprintf("%.1f", r.P50us) }},
		{"p99 µs", func(r BenchResult) string { return fmt.Sprintf("%.1f", r.P99us) }},
		{"cache hits", func(r BenchResult) string { return fmt.Sprintf("%.2f", r.HitRatio) }}},
	"scan": {{"records/s", func(r BenchResult) string { return fmt.Sprintf("%.0f", r.RecsPerSec) }},
		{"MB/s", func(r BenchResult) string { return fmt.Sprintf("%.1f", r.MBPerSec) }},
		{"seconds", func(r BenchResult) string { return fmt.Sprintf("%.3f", r.Seconds) }}},
}

// printBench prints results as JSON ({"options", "environment",
// "results"}, snake_case throughout) or as one table per kind of result,
// each with its own columns.
func printBench(out io.Writer, o BenchOptions, env BenchEnv, rs ...BenchResult) error {
	if o.Sync == "" {
		o.Sync = "always"
	}
	if o.JSON {
		return writeReport(out, map[string]any{"options": o, "environment": env, "results": rs})
	}
	fmt.Fprintf(out, "%d B records, batches of %d, %d workers, sync %s, %v\n", o.RecordSize, o.Batch, o.Workers, o.Sync, o.Duration)
	fmt.Fprintf(out, "host %s, Linux %s, %d CPUs, %s, %s (direct=%v), load %.2f before, %.2f after\n",
		env.Host, env.Kernel, env.CPUs, env.Go, env.Filesystem, env.Direct, env.LoadBefore, env.LoadAfter)
	for _, r := range rs {
		kind, _, _ := strings.Cut(r.Op, "-") // read-uniform, read-zipf: read
		cols := benchColumns[kind]
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprint(tw, "op\t")
		for _, c := range cols {
			fmt.Fprint(tw, c.head, "\t")
		}
		fmt.Fprintf(tw, "\n%s\t", r.Op)
		for _, c := range cols {
			fmt.Fprint(tw, c.cell(r), "\t")
		}
		fmt.Fprintln(tw)
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
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
