package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// summary is what summary.md and the ratio chart are made of.
type summary struct {
	Header    []string // lines about the run and the machine
	Adapters  []Adapter
	Workloads []Workload
	// cells[w][a]: the results of workload w on adapter a over the
	// repetitions (errors and n/a included).
	cells map[string]map[string][]Result
	fios  map[string][]FioResult
	cold  error
	fio   bool
}

func buildSummary(c config, results []Result, fios []FioResult, cold error, took time.Duration) *summary {
	s := &summary{Adapters: c.adapters, Workloads: c.workloads, cells: map[string]map[string][]Result{}, fios: map[string][]FioResult{}, cold: cold, fio: c.fio}
	for _, r := range results {
		if s.cells[r.Workload] == nil {
			s.cells[r.Workload] = map[string][]Result{}
		}
		s.cells[r.Workload][r.Adapter] = append(s.cells[r.Workload][r.Adapter], r)
	}
	for _, f := range fios {
		s.fios[f.Fio] = append(s.fios[f.Fio], f)
	}
	mode := "full"
	if c.quick {
		mode = "quick"
	}
	s.Header = []string{
		fmt.Sprintf("run %s, %s mode, %d repetition(s), took %s", c.run, mode, c.reps, took.Round(time.Second)),
		"command: `go run . " + strings.Join(c.args, " ") + "` (in tools/peerbench)",
		fmt.Sprintf("data set: %d records of 1 KiB in batches of %d (%d MiB); random reads per measurement: %d (at most %g s); appends: at most %g s each",
			c.sizes.DataSet, dataBatch, c.workingSet()>>20, c.sizes.Reads, c.sizes.ReadSeconds, c.sizes.AppendSeconds),
	}
	s.Header = append(s.Header, machine(c.root)...)
	return s
}

// machine describes the machine and filesystem the run was on.
func machine(dir string) []string {
	out := func(name string, args ...string) string {
		b, err := exec.Command(name, args...).Output()
		if err != nil {
			return "unknown (" + err.Error() + ")"
		}
		return strings.TrimSpace(string(b))
	}
	cpu := "unknown"
	mem := "unknown"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				cpu = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		mem = strings.TrimSpace(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"))
	}
	df := strings.Split(out("df", "-hT", dir), "\n")
	commit := out("git", "rev-parse", "--short", "HEAD")
	if st := out("git", "status", "--porcelain", "--untracked-files=no"); st != "" && !strings.HasPrefix(st, "unknown") {
		commit += " with uncommitted changes"
	}
	return []string{
		"segstore measured: commit " + commit,
		fmt.Sprintf("machine: %s cores (nproc), %s, memory %s", out("nproc"), cpu, mem),
		"kernel: " + out("uname", "-srvm"),
		fmt.Sprintf("go: %s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH),
		"filesystem of the data: " + strings.Join(strings.Fields(df[len(df)-1]), " "),
	}
}

// values are the metric of w over the repetitions that succeeded on a.
func (s *summary) values(w Workload, a string) []float64 {
	var vs []float64
	for _, r := range s.cells[w.Name][a] {
		if r.Status == "ok" {
			vs = append(vs, w.metric(r))
		}
	}
	return vs
}

// status is why a cell has no number ("" when it has one).
func (s *summary) status(w Workload, a string) string {
	rs := s.cells[w.Name][a]
	if len(rs) == 0 {
		return "not run"
	}
	for _, r := range rs {
		if r.Status != "ok" {
			return r.Status
		}
	}
	return ""
}

// num formats a number with three significant figures or so.
func num(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return fmt.Sprintf("%.2fM", v/1e6)
	case a >= 1e5:
		return fmt.Sprintf("%.0fk", v/1e3)
	case a >= 1e4:
		return fmt.Sprintf("%.1fk", v/1e3)
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// times formats a ratio with two significant figures ("0.0031×", "1.8×",
// "16×").
func times(r float64) string {
	if r >= 10 {
		return fmt.Sprintf("%.0f×", r)
	}
	return strconv.FormatFloat(r, 'g', 2, 64) + "×"
}

// cell is "median (min–max)", or the median alone for one value, or why
// there is none.
func cell(vs []float64, status string) string {
	if status != "" && len(vs) == 0 {
		return status
	}
	m := summarize(vs)
	c := num(m.Median)
	if m.N > 1 {
		c += fmt.Sprintf(" (%s–%s)", num(m.Min), num(m.Max))
	}
	if status != "" {
		c += " " + status + " in some"
	}
	return c
}

// ratios are, for each of segstore's adapters, how many times better its
// median is than the best peer's median (above 1: segstore wins); 0 where
// either has no number. bestPeer names the peer.
func (s *summary) ratios(w Workload) (rs map[string]float64, bestPeer string) {
	var peers []string
	var meds []float64
	for _, a := range s.Adapters {
		if a.Peer {
			peers = append(peers, a.Name)
			meds = append(meds, summarize(s.values(w, a.Name)).Median)
		}
	}
	bi := best(meds, w.Higher)
	rs = map[string]float64{}
	for _, a := range s.Adapters {
		if !a.Peer && bi >= 0 {
			rs[a.Name] = ratio(summarize(s.values(w, a.Name)).Median, meds[bi], w.Higher)
		}
	}
	if bi >= 0 {
		bestPeer = peers[bi]
	}
	return rs, bestPeer
}

func (s *summary) own() []string {
	var own []string
	for _, a := range s.Adapters {
		if !a.Peer {
			own = append(own, a.Name)
		}
	}
	return own
}

func (s *summary) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# peerbench\n\n")
	for _, h := range s.Header {
		p("- %s\n", h)
	}
	if s.cold != nil {
		p("- cold unavailable: %v\n", s.cold)
	}
	p("\nEach cell: median (min–max) over the repetitions, each measurement in a fresh process. ")
	p("The last columns: how many times better segstore's median is than the best peer's (above 1: segstore is faster), and which peer that is.\n\n")
	row := func(cells ...string) { p("| %s |\n", strings.Join(cells, " | ")) }
	hdr := []string{"workload", "unit"}
	for _, a := range s.Adapters {
		hdr = append(hdr, a.Name)
	}
	own := s.own()
	for _, o := range own {
		hdr = append(hdr, o+" / best peer")
	}
	hdr = append(hdr, "best peer")
	row(hdr...)
	row(strings.Split(strings.Repeat("---,", len(hdr)), ",")[:len(hdr)]...)
	for _, w := range s.Workloads {
		unit := w.Unit
		if !w.Higher {
			unit += " (lower is better)"
		}
		cells := []string{w.Name, unit}
		for _, a := range s.Adapters {
			cells = append(cells, cell(s.values(w, a.Name), s.status(w, a.Name)))
		}
		rs, bp := s.ratios(w)
		for _, o := range own {
			if rs[o] > 0 {
				cells = append(cells, times(rs[o]))
			} else {
				cells = append(cells, "—")
			}
		}
		if bp == "" {
			bp = "—"
		}
		row(append(cells, bp)...)
	}
	sub := append([]string{"workload"}, hdr[2:len(s.Adapters)+2]...)
	subRule := strings.Split(strings.Repeat("---,", len(sub)), ",")[:len(sub)]
	p("\n## Latency of appends and reads (median p50 / p99 in µs, per batch or per read)\n\n")
	row(sub...)
	row(subRule...)
	for _, w := range s.Workloads {
		if w.Kind == "reopen" {
			continue
		}
		cells := []string{w.Name}
		for _, a := range s.Adapters {
			var p50, p99 []float64
			for _, r := range s.cells[w.Name][a.Name] {
				if r.Status == "ok" {
					p50, p99 = append(p50, r.P50us), append(p99, r.P99us)
				}
			}
			if len(p50) == 0 {
				cells = append(cells, s.status(w, a.Name))
				continue
			}
			cells = append(cells, num(summarize(p50).Median)+" / "+num(summarize(p99).Median))
		}
		row(cells...)
	}
	p("\n## Peak RSS of the measuring process (MiB, median)\n\n")
	row(sub...)
	row(subRule...)
	for _, w := range s.Workloads {
		cells := []string{w.Name}
		for _, a := range s.Adapters {
			var rss []float64
			for _, r := range s.cells[w.Name][a.Name] {
				if r.Status == "ok" {
					rss = append(rss, float64(r.MaxRSSKiB)/1024)
				}
			}
			cells = append(cells, cell(rss, s.status(w, a.Name)))
		}
		row(cells...)
	}
	p("\n## The device, measured by fio in the same run on the same filesystem\n\n")
	if !s.fio && len(s.fios) == 0 {
		p("fio unavailable (or -nofio): not measured.\n")
	} else {
		row("fio job", "what", "MiB/s", "IOPS", "p50 µs", "p99 µs")
		row("---", "---", "---", "---", "---", "---")
		for _, j := range fioJobs {
			fs := s.fios[j.Name]
			if len(fs) == 0 {
				row(j.Name, j.Desc, "not measured", "", "", "")
				continue
			}
			var mb, iops, p50, p99 []float64
			for _, f := range fs {
				mb, iops, p50, p99 = append(mb, f.MiBPerS), append(iops, f.IOPS), append(p50, f.P50us), append(p99, f.P99us)
			}
			row(j.Name, j.Desc, cell(mb, ""), cell(iops, ""), cell(p50, ""), cell(p99, ""))
		}
	}
	var notes []string
	for _, w := range s.Workloads {
		var capped []string
		for _, a := range s.Adapters {
			for _, r := range s.cells[w.Name][a.Name] {
				switch {
				case r.Status == "error":
					notes = append(notes, fmt.Sprintf("%s on %s, rep %d: ERROR %s", w.Name, a.Name, r.Rep, r.Error))
				case r.Capped:
					capped = append(capped, fmt.Sprintf("%s rep %d (%d ops in %.1f s)", a.Name, r.Rep, r.Ops, r.Seconds))
				}
			}
		}
		if len(capped) > 0 {
			notes = append(notes, fmt.Sprintf("%s stopped at the time cap on %s", w.Name, strings.Join(capped, ", ")))
		}
	}
	if segs := s.segmentNotes(); len(segs) > 0 {
		p("\n## Segments segstore's appends rolled through\n\n%s\n", strings.Join(segs, "; "))
	}
	if len(notes) > 0 {
		p("\n## Notes\n\n")
		for _, n := range notes {
			p("- %s\n", n)
		}
	}
	p("\n## Workloads\n\n")
	for _, w := range s.Workloads {
		p("- `%s`: %s.\n", w.Name, w.Desc)
	}
	p("\n## Adapters\n\n")
	for _, a := range s.Adapters {
		p("- `%s` (concurrent appends: %s): %s.\n", a.Name, a.Concurrency, a.Config)
	}
	return b.String()
}

// segmentNotes say how many segment files segstore's append runs ended
// with, so a reader sees whether the runs rolled segments.
func (s *summary) segmentNotes() []string {
	var out []string
	for _, w := range s.Workloads {
		if w.Kind != "append" {
			continue
		}
		for _, o := range s.own() {
			var segs []string
			for _, r := range s.cells[w.Name][o] {
				if r.Status == "ok" {
					segs = append(segs, fmt.Sprint(r.Segments))
				}
			}
			if len(segs) > 0 {
				out = append(out, fmt.Sprintf("%s %s: %s", w.Name, o, strings.Join(segs, ", ")))
			}
		}
	}
	return out
}

// chart draws, for each workload, each of segstore's adapters' median as a
// ratio to the best peer's, on a log scale: a bar right of the line at 1×
// is a workload segstore wins. It writes base.svg and base.png.
func (s *summary) chart(base string) error {
	p := plot.New()
	p.Title.Text = "segstore / best peer (log scale; right of 1× = segstore faster)"
	own := s.own()
	var names []string
	vals := make([]plotter.Values, len(own))
	// Rows top to bottom in the summary's order: NominalY puts the first
	// name at the bottom, so go backwards.
	for i := len(s.Workloads) - 1; i >= 0; i-- {
		w := s.Workloads[i]
		rs, bp := s.ratios(w)
		label := w.Name
		if bp != "" {
			label += " (vs " + bp + ")"
		}
		missing := false
		for k, o := range own {
			v := 0.0
			if rs[o] > 0 {
				v = math.Log10(rs[o])
			} else {
				missing = true
			}
			vals[k] = append(vals[k], v)
		}
		if missing {
			label += " [n/a]"
		}
		names = append(names, label)
	}
	palette := []color.Color{color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}, color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}}
	w := vg.Points(7)
	lo, hi := 0.0, 0.0
	for k, o := range own {
		bars, err := plotter.NewBarChart(vals[k], w)
		if err != nil {
			return err
		}
		bars.Horizontal = true
		bars.Color = palette[k%len(palette)]
		bars.Offset = vg.Length(float64(k)-float64(len(own)-1)/2) * w
		p.Add(bars)
		p.Legend.Add(o, bars)
		for _, v := range vals[k] {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	lo, hi = math.Floor(lo), math.Ceil(hi)
	if hi-lo < 1 {
		hi = lo + 1
	}
	var ticks []plot.Tick
	for e := lo; e <= hi; e++ {
		ticks = append(ticks, plot.Tick{Value: e, Label: strings.TrimRight(strings.TrimRight(fmt.Sprintf("%.3f", math.Pow(10, e)), "0"), ".") + "×"})
	}
	p.X.Min, p.X.Max = lo, hi
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	p.Add(plotter.NewGrid())
	p.NominalY(names...)
	p.Legend.Top, p.Legend.Left = true, true
	h := vg.Length(1+0.3*float64(len(names))) * vg.Inch
	for _, ext := range []string{".svg", ".png"} {
		if err := p.Save(8*vg.Inch, h, base+ext); err != nil {
			return err
		}
	}
	return nil
}
