// Command peerbench measures segstore side by side with the log stores its
// users would pick instead: hashicorp/raft-wal and raft-boltdb (through
// raft.LogStore), tidwall/wal, and a plain page-cache log. Every store is
// driven through one small interface (Store), every measurement runs in a
// fresh child process (this binary, re-executed with the child
// sub-command), the adapters are interleaved with their order rotated per
// repetition, and the device's own limits are measured by fio in the same
// run.
//
//	go run . -quick                      # every workload and store, small, about a minute or two
//	go run .                             # the full run (see README.md for its duration)
//	go run . -quick -workloads randread-uniform -adapters segstore,pagelog
//
// It writes raw.jsonl (one JSON line per measurement), summary.md (the
// tables) and ratio.svg and ratio.png (segstore's result as a ratio to the
// best peer) into the -out directory.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "child" || os.Args[1] == "hold") {
		os.Exit(childMain(os.Args[1], os.Args[2:]))
	}
	os.Exit(parentMain(os.Args[1:]))
}

// childMain runs one measurement described by the JSON in args[0] and
// prints its result as one JSON line on stdout.
func childMain(mode string, args []string) int {
	if len(args) != 1 {
		fmt.Fprintf(os.Stderr, "peerbench %s: want one argument, the parameters as JSON (this sub-command is run by peerbench itself)\n", mode)
		return 2
	}
	var p Params
	if err := json.Unmarshal([]byte(args[0]), &p); err != nil {
		fmt.Fprintf(os.Stderr, "peerbench %s: parameters: %v\n", mode, err)
		return 2
	}
	if mode == "hold" {
		a, err := findAdapter(p.Adapter)
		if err == nil {
			err = doHold(a, p, func() { fmt.Println("ready") })
		}
		fmt.Fprintf(os.Stderr, "peerbench hold %s in %s: %v\n", p.Adapter, p.Dir, err)
		return 1
	}
	r, err := runChild(p)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s on %s in %s: %v\n", p.Workload, p.Adapter, p.Dir, err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		fmt.Fprintf(os.Stderr, "writing the result: %v\n", err)
		return 1
	}
	return 0
}

type config struct {
	quick     bool
	reps      int
	workloads []Workload
	adapters  []Adapter
	root      string // the data directory, removed at the end
	out       string
	fio       bool
	sizes     Sizes
	run       string // the run's name: its start time
	args      []string
}

func parentMain(args []string) int {
	fs := flag.NewFlagSet("peerbench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "small sizes and 1 repetition: every workload and store in a few minutes, for a check (not for quoting)")
	reps := fs.Int("reps", 0, "repetitions (default 1 with -quick, 3 without)")
	wl := fs.String("workloads", "all", "comma-separated workload names or prefixes (append, seqread, randread, randread-zipf, reopen, ...)")
	al := fs.String("adapters", "all", "comma-separated adapters: "+strings.Join(adapterNames(), ", "))
	dir := fs.String("dir", ".", "where to make the run's data directory (removed at the end); fio runs there too, so it measures the same filesystem")
	out := fs.String("out", "", "directory for raw.jsonl, summary.md, ratio.svg and ratio.png (default results/<UTC time>-quick or -full)")
	noFio := fs.Bool("nofio", false, "skip the fio measurement of the device")
	list := fs.Bool("list", false, "list the workloads and adapters and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: peerbench [flags]\n\nMeasures segstore beside raft-wal, raft-boltdb, tidwall/wal and a page-cache log, each measurement in a fresh process.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *list {
		for _, w := range workloads {
			fmt.Printf("%-26s %s\n", w.Name, w.Desc)
		}
		fmt.Println()
		for _, a := range adapters {
			fmt.Printf("%-16s %s\n", a.Name, a.Config)
		}
		return 0
	}
	c := config{quick: *quick, reps: *reps, fio: !*noFio, args: args}
	var err error
	if c.workloads, err = selectWorkloads(*wl); err != nil {
		fmt.Fprintln(os.Stderr, "peerbench: -workloads:", err)
		return 2
	}
	if c.adapters, err = selectAdapters(*al); err != nil {
		fmt.Fprintln(os.Stderr, "peerbench: -adapters:", err)
		return 2
	}
	c.sizes = fullSizes
	mode := "full"
	if c.quick {
		c.sizes, mode = quickSizes, "quick"
	}
	if c.reps <= 0 {
		c.reps = c.sizes.Reps
	}
	start := time.Now().UTC()
	c.run = start.Format("2006-01-02T15:04:05Z")
	c.out = *out
	if c.out == "" {
		c.out = filepath.Join("results", start.Format("2006-01-02T1504Z")+"-"+mode)
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "peerbench: making the output directory:", err)
		return 1
	}
	if c.root, err = os.MkdirTemp(*dir, ".peerbench-data-"); err != nil {
		fmt.Fprintf(os.Stderr, "peerbench: making the data directory in %s: %v (choose another with -dir)\n", *dir, err)
		return 1
	}
	c.root, _ = filepath.Abs(c.root)
	// The data directory goes at the end, and on an interrupt too.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "peerbench: %v: removing %s\n", s, c.root)
		os.RemoveAll(c.root)
		os.Exit(1)
	}()
	defer os.RemoveAll(c.root)
	failed, err := run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "peerbench:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "peerbench: done in %s; results in %s\n", time.Since(start).Round(time.Second), c.out)
	if failed > 0 {
		fmt.Fprintf(os.Stderr, "peerbench: %d measurements failed (status \"error\" in raw.jsonl, the reason beside it)\n", failed)
		return 1
	}
	return 0
}

// run does the whole benchmark and writes its output; failed counts the
// measurements that ended in an error (a wrong read among them).
func run(c config) (failed int, err error) {
	start := time.Now()
	raw, err := os.Create(filepath.Join(c.out, "raw.jsonl"))
	if err != nil {
		return 0, err
	}
	defer raw.Close()
	enc := json.NewEncoder(raw)
	var results []Result
	var fios []FioResult
	emit := func(r Result) {
		r.Run = c.run
		if r.Status == "error" {
			failed++
		}
		results = append(results, r)
		enc.Encode(r)
		fmt.Fprintln(os.Stderr, progressLine(c, r))
	}
	needData, needCold := false, false
	for _, w := range c.workloads {
		needData = needData || w.needsDataSet()
		needCold = needCold || w.Temp == "cold"
	}
	var cold error
	if needCold {
		if cold = dropCaches(); cold != nil {
			fmt.Fprintf(os.Stderr, "peerbench: cold unavailable: %v\n", cold)
		}
	}
	if needData {
		for _, a := range c.adapters {
			r := c.child(Params{Workload: "build", Kind: "build", Adapter: a.Name, Dir: c.dataDir(a),
				RecordSize: dataRecord, Batch: dataBatch, Records: c.sizes.DataSet, WorkingSet: c.workingSet()})
			emit(r)
			if r.Status != "ok" {
				return failed, fmt.Errorf("building the data set of %s failed: %s", a.Name, r.Error)
			}
		}
	}
	for rep := 1; rep <= c.reps; rep++ {
		if c.fio {
			fr, err := runFio(c.root, rep, c.sizes)
			if err != nil {
				fmt.Fprintf(os.Stderr, "peerbench: %v\n", err)
				c.fio = false
			}
			for _, f := range fr {
				f.Run = c.run
				enc.Encode(f)
				fios = append(fios, f)
			}
		}
		order := rotate(c.adapters, rep-1)
		for _, w := range c.workloads {
			for slot, a := range order {
				r := c.measure(w, a, rep, cold)
				r.Rep, r.Slot = rep, slot
				emit(r)
			}
		}
	}
	s := buildSummary(c, results, fios, cold, time.Since(start))
	if err := os.WriteFile(filepath.Join(c.out, "summary.md"), []byte(s.markdown()), 0o644); err != nil {
		return failed, err
	}
	if err := s.chart(filepath.Join(c.out, "ratio")); err != nil {
		return failed, fmt.Errorf("drawing the chart: %w", err)
	}
	fmt.Print(s.markdown())
	return failed, nil
}

func progressLine(c config, r Result) string {
	head := fmt.Sprintf("rep %d/%d %-24s %-15s", r.Rep, c.reps, r.Workload, r.Adapter)
	if r.Status != "ok" {
		return head + " " + r.Status + " " + r.Error
	}
	var what string
	switch {
	case r.ReopenMs > 0:
		what = fmt.Sprintf("%.1f ms (open %.1f ms)", r.ReopenMs, r.OpenMs)
	default:
		what = fmt.Sprintf("%.0f ops/s %.1f MiB/s p50 %.0f us p99 %.0f us%s", r.OpsPerS, r.MiBPerS, r.P50us, r.P99us, map[bool]string{true: " (capped)"}[r.Capped])
	}
	return fmt.Sprintf("%s %s rss %d MiB", head, what, r.MaxRSSKiB>>10)
}

// rotate returns as rotated left by k.
func rotate[T any](as []T, k int) []T {
	if len(as) == 0 {
		return nil
	}
	k %= len(as)
	return append(append([]T(nil), as[k:]...), as[:k]...)
}

func (c config) dataDir(a Adapter) string { return filepath.Join(c.root, "data", a.Name) }
func (c config) workingSet() int64        { return c.sizes.DataSet * dataRecord }

// measure runs workload w on adapter a in a fresh child, after putting the
// page cache (and, for a kill, the store) in the state w says.
func (c config) measure(w Workload, a Adapter, rep int, cold error) Result {
	r := Result{Workload: w.Name, Adapter: a.Name}
	if w.Concurrent && a.Concurrency == NoConcurrency {
		r.Status, r.Error = "n/a", "raft.LogStore has one appender (raft's log writer)"
		return r
	}
	if w.Temp == "cold" && cold != nil {
		r.Status, r.Error = "cold unavailable", cold.Error()
		return r
	}
	p := w.params(c.sizes)
	p.Workload, p.Kind, p.Adapter = w.Name, w.Kind, a.Name
	p.Seed = int64(rep) * 7919
	if w.Kind == "append" {
		p.Dir = filepath.Join(c.root, "append", fmt.Sprintf("%s-%s-%d", w.Name, a.Name, rep))
		defer os.RemoveAll(p.Dir)
	} else {
		p.Dir, p.DataSet, p.WorkingSet = c.dataDir(a), c.sizes.DataSet, c.workingSet()
	}
	if w.Kill {
		if err := hold(p); err != nil {
			r.Status, r.Error = "error", err.Error()
			return r
		}
	}
	switch w.Temp {
	case "cold":
		if err := dropCaches(); err != nil {
			r.Status, r.Error = "cold unavailable", err.Error()
			return r
		}
	case "warm", "hot":
		if err := warmDir(p.Dir); err != nil {
			r.Status, r.Error = "error", err.Error()
			return r
		}
	}
	return c.child(p)
}

// childTimeout bounds one child, far beyond any time cap: only a store
// that hangs reaches it.
const childTimeout = 15 * time.Minute

// child runs p in a fresh process of this binary and returns its result,
// with the peak RSS and CPU time from the process's rusage.
func (c config) child(p Params) Result {
	fail := Result{Workload: p.Workload, Adapter: p.Adapter, Status: "error"}
	self, err := os.Executable()
	if err != nil {
		fail.Error = err.Error()
		return fail
	}
	js, _ := json.Marshal(p)
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "child", string(js))
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var r Result
	if ctx.Err() != nil {
		err = fmt.Errorf("killed after %v without a result (a store that hangs, or a machine far slower than the time caps assume)", childTimeout)
	}
	if err == nil {
		err = json.Unmarshal(stdout.Bytes(), &r)
	}
	if err != nil {
		fail.Error = strings.TrimSpace(fmt.Sprintf("%v: %s", err, tail(stderr.String(), 2000)))
		return fail
	}
	childUsage(cmd.ProcessState, &r)
	return r
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// hold starts a child that opens the data set, appends one durable
// record and says ready; then it SIGKILLs it, leaving the store as a crash
// leaves it.
func hold(p Params) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	js, _ := json.Marshal(p)
	ctx, cancel := context.WithTimeout(context.Background(), childTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, self, "hold", string(js))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	line, rerr := bufio.NewReader(out).ReadString('\n')
	cmd.Process.Kill()
	werr := cmd.Wait()
	if rerr != nil || line != "ready\n" {
		return fmt.Errorf("the child to be killed on %s did not get ready (%v, %v): %s", p.Adapter, rerr, werr, tail(stderr.String(), 2000))
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return fmt.Errorf("the child to be killed on %s ended before the SIGKILL (%v): %s", p.Adapter, werr, tail(stderr.String(), 2000))
	}
	return nil
}

// dropCaches writes back dirty pages and drops the page cache (as root);
// the error says why it cannot.
func dropCaches() error {
	syncFilesystems()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("dropping the page cache (echo 3 > /proc/sys/vm/drop_caches needs root): %w", err)
	}
	return nil
}

// warmDir reads every file under dir, so that its pages are in the page
// cache.
func warmDir(dir string) error {
	buf := make([]byte, 1<<20)
	return filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{f}, buf); err != nil {
			return fmt.Errorf("warming %s: %w", path, err)
		}
		return nil
	})
}
