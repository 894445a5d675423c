package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		vs   []float64
		want spread
	}{
		{nil, spread{}},
		{[]float64{5}, spread{1, 5, 5, 5}},
		{[]float64{3, 1, 2}, spread{3, 2, 1, 3}},
		{[]float64{4, 1, 3, 2}, spread{4, 2.5, 1, 4}},
	} {
		assert.Equal(t, tc.want, summarize(tc.vs), "%v", tc.vs)
	}
	vs := []float64{3, 1, 2}
	summarize(vs)
	assert.Equal(t, []float64{3, 1, 2}, vs, "summarize leaves its input alone")
}

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i))
	}
	assert.Equal(t, time.Duration(50), percentile(ds, 0.5))
	assert.Equal(t, time.Duration(99), percentile(ds, 0.99))
	assert.Equal(t, time.Duration(100), percentile(ds, 1))
	assert.Equal(t, time.Duration(1), percentile(ds, 0))
	assert.Equal(t, time.Duration(0), percentile(nil, 0.5))
	assert.Equal(t, time.Duration(7), percentile([]time.Duration{7}, 0.99))
}

func TestRatioAndBest(t *testing.T) {
	assert.Equal(t, 2.0, ratio(10, 5, true))
	assert.Equal(t, 2.0, ratio(5, 10, false), "half the time is twice as good")
	assert.Equal(t, 0.0, ratio(0, 10, true))
	assert.Equal(t, 0.0, ratio(10, 0, false))
	assert.Equal(t, 1, best([]float64{3, 9, 0, 4}, true))
	assert.Equal(t, 0, best([]float64{3, 9, 0, 4}, false), "a missing value (0) is never best")
	assert.Equal(t, -1, best([]float64{0, 0}, true))
	assert.Equal(t, -1, best(nil, false))
}

func TestTimes(t *testing.T) {
	for r, want := range map[float64]string{0.0031234: "0.0031×", 0.5: "0.5×", 1.8123: "1.8×", 9.96: "10×", 15.76: "16×", 123.4: "123×"} {
		assert.Equal(t, want, times(r), "%v", r)
	}
}

func TestRotate(t *testing.T) {
	as := []int{1, 2, 3}
	assert.Equal(t, []int{1, 2, 3}, rotate(as, 0))
	assert.Equal(t, []int{2, 3, 1}, rotate(as, 1))
	assert.Equal(t, []int{1, 2, 3}, rotate(as, 3))
	assert.Equal(t, []int{1, 2, 3}, as)
}

func TestSelect(t *testing.T) {
	names := func(ws []Workload) (out []string) {
		for _, w := range ws {
			out = append(out, w.Name)
		}
		return out
	}
	for _, tc := range []struct {
		list string
		want []string
		err  string
	}{
		{"append-1k-x1", []string{"append-1k-x1"}, ""},
		{"append-1k-x1-", []string{"append-1k-x1-c16"}, ""},
		{"seqread", []string{"seqread-cold", "seqread-warm"}, ""},
		{"reopen-kill", []string{"reopen-kill-cold", "reopen-kill-warm"}, ""},
		{"randread-zipf-hot", []string{"randread-zipf-hot"}, ""},
		{"randread-zipf-hot-,seqread-warm", []string{"seqread-warm", "randread-zipf-hot-c16"}, ""},
		{"randread-zi", nil, `no workload matches "randread-zi"`},
	} {
		ws, err := selectWorkloads(tc.list)
		if tc.err != "" {
			assert.ErrorContains(t, err, tc.err)
			continue
		}
		require.NoError(t, err, tc.list)
		assert.Equal(t, tc.want, names(ws), tc.list)
	}
	all, err := selectWorkloads("")
	require.NoError(t, err)
	assert.Len(t, all, len(workloads))

	as, err := selectAdapters("pagelog, segstore,pagelog")
	require.NoError(t, err)
	require.Len(t, as, 2)
	assert.Equal(t, "segstore", as[0].Name, "adapters keep the summary's order")
	_, err = selectAdapters("rocksdb")
	assert.ErrorContains(t, err, `no adapter "rocksdb": choose from segstore, segstore-cache`)
}

// TestSummaryTables builds the summary of a made-up run and checks its
// cells, ratios, statuses and chart.
func TestSummaryTables(t *testing.T) {
	ws, err := selectWorkloads("append-1k-x1,append-1k-x1-c16,reopen-clean-cold,seqread-cold")
	require.NoError(t, err)
	as, err := selectAdapters("segstore,raft-wal,pagelog")
	require.NoError(t, err)
	res := func(w, a string, rep int, mib, ms float64) Result {
		return Result{Workload: w, Adapter: a, Rep: rep, Status: "ok", MiBPerS: mib, ReopenMs: ms, P50us: 10 * mib, P99us: 100 * mib, MaxRSSKiB: 2048}
	}
	var rs []Result
	for rep, f := range []float64{1, 2, 3} {
		rs = append(rs,
			res("append-1k-x1", "segstore", rep+1, 4*f, 0),
			res("append-1k-x1", "raft-wal", rep+1, 2*f, 0),
			res("append-1k-x1", "pagelog", rep+1, 1*f, 0),
			res("append-1k-x1-c16", "segstore", rep+1, 10*f, 0),
			Result{Workload: "append-1k-x1-c16", Adapter: "raft-wal", Rep: rep + 1, Status: "n/a"},
			res("append-1k-x1-c16", "pagelog", rep+1, 20*f, 0),
			res("reopen-clean-cold", "segstore", rep+1, 0, 100*f),
			res("reopen-clean-cold", "raft-wal", rep+1, 0, 50*f),
			res("reopen-clean-cold", "pagelog", rep+1, 0, 400*f),
		)
	}
	rs = append(rs, Result{Workload: "seqread-cold", Adapter: "pagelog", Rep: 1, Status: "error", Error: "record 5: read the record of index 6"},
		Result{Workload: "seqread-cold", Adapter: "segstore", Rep: 1, Status: "ok", MiBPerS: 3, Capped: true, Ops: 70, Seconds: 2},
		Result{Workload: "seqread-cold", Adapter: "raft-wal", Rep: 1, Status: "ok", MiBPerS: 2, Capped: true, Ops: 50, Seconds: 2.04})
	c := config{adapters: as, workloads: ws, reps: 3, run: "test", sizes: quickSizes, root: t.TempDir(), args: []string{"-quick"}}
	s := buildSummary(c, rs, []FioResult{{Fio: "randread-4k-qd1", MiBPerS: 40, IOPS: 10000, P50us: 90, P99us: 200}}, nil, time.Second)
	md := s.markdown()
	for _, want := range []string{
		"| append-1k-x1 | MiB/s | 8.00 (4.00–12.0) | 4.00 (2.00–6.00) | 2.00 (1.00–3.00) | 2× | raft-wal |",
		"| append-1k-x1-c16 | MiB/s | 20.0 (10.0–30.0) | n/a | 40.0 (20.0–60.0) | 0.5× | pagelog |",
		"| reopen-clean-cold | ms (lower is better) | 200 (100–300) | 100 (50.0–150) | 800 (400–1200) | 0.5× | raft-wal |",
		"| seqread-cold | MiB/s | 3.00 | 2.00 | error | 1.5× | raft-wal |",
		"- seqread-cold stopped at the time cap on segstore rep 1 (70 ops in 2.0 s), raft-wal rep 1 (50 ops in 2.0 s)\n",
		"| append-1k-x1 | 80.0 / 800 | 40.0 / 400 | 20.0 / 200 |",
		"| append-1k-x1 | 2.00 (2.00–2.00) | 2.00 (2.00–2.00) | 2.00 (2.00–2.00) |",
		"| randread-4k-qd1 | random O_DIRECT 4 KiB reads, queue depth 1 | 40.0 | 10.0k | 90.0 | 200 |",
		"| seqread-1m | sequential O_DIRECT 1 MiB reads | not measured |",
		"seqread-cold on pagelog, rep 1: ERROR record 5: read the record of index 6",
		"command: `go run . -quick`",
	} {
		assert.Contains(t, md, want)
	}
	base := filepath.Join(t.TempDir(), "ratio")
	require.NoError(t, s.chart(base))
	png, err := os.ReadFile(base + ".png")
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(png), "\x89PNG"), "a PNG")
	b, err := os.ReadFile(base + ".svg")
	require.NoError(t, err)
	assert.True(t, strings.Contains(string(b), "<svg"), "an SVG")
	for _, w := range ws {
		assert.Contains(t, string(b), w.Name, "the chart names every workload")
	}
}

func TestParseFio(t *testing.T) {
	out := []byte(`fio: some warning
{"jobs":[{"read":{"bw_bytes":1048576,"iops":256,"clat_ns":{"percentile":{"50.000000":90000,"99.000000":250000}}},
"write":{"bw_bytes":2097152,"iops":2,"clat_ns":{"percentile":{"50.000000":1000000,"99.000000":3000000}}}}]}`)
	r, err := parseFio(out, false)
	require.NoError(t, err)
	assert.Equal(t, FioResult{MiBPerS: 1, IOPS: 256, P50us: 90, P99us: 250}, r)
	r, err = parseFio(out, true)
	require.NoError(t, err)
	assert.Equal(t, FioResult{MiBPerS: 2, IOPS: 2, P50us: 1000, P99us: 3000}, r)
	_, err = parseFio([]byte(`{"jobs":[]}`), false)
	assert.ErrorContains(t, err, "no job")
	_, err = parseFio([]byte(`garbage`), false)
	assert.ErrorContains(t, err, "parsing fio's JSON")
}

// TestRunEndToEnd runs the harness as the command does, each measurement
// in a child process (this test binary, see TestMain), on tiny sizes: two
// repetitions of appends, concurrent appends, sequential and hot
// concurrent random reads and a reopen after a SIGKILL, on three stores.
func TestRunEndToEnd(t *testing.T) {
	ws, err := selectWorkloads("append-1k-x1,append-1k-x1-c16,seqread-warm,randread-zipf-hot-c16,reopen-kill-warm")
	require.NoError(t, err)
	as, err := selectAdapters("segstore,raft-wal,pagelog")
	require.NoError(t, err)
	tiny := Sizes{AppendSeconds: 5, AppendBytes: 1 << 20, AppendSmall: 160, DataSet: 2048, Reads: 320, ReadSeconds: 5}
	c := config{reps: 2, workloads: ws, adapters: as, root: t.TempDir(), out: t.TempDir(), sizes: tiny, run: "test"}
	failed, err := run(c)
	require.NoError(t, err)
	require.Zero(t, failed)

	b, err := os.ReadFile(filepath.Join(c.out, "raw.jsonl"))
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	require.Len(t, lines, len(as)+c.reps*len(ws)*len(as), "a build per store, then a line per measurement")
	var results []Result
	for _, l := range lines {
		var r Result
		require.NoError(t, json.Unmarshal([]byte(l), &r))
		results = append(results, r)
	}
	for _, r := range results {
		if r.Workload == "append-1k-x1-c16" && r.Adapter == "raft-wal" {
			assert.Equal(t, "n/a", r.Status)
			continue
		}
		require.Equal(t, "ok", r.Status, "%s on %s: %s", r.Workload, r.Adapter, r.Error)
		assert.Positive(t, r.MaxRSSKiB, "%s on %s: peak RSS from the child's rusage", r.Workload, r.Adapter)
		assert.False(t, r.Capped, "%s on %s", r.Workload, r.Adapter)
		if r.Workload == "reopen-kill-warm" {
			assert.Positive(t, r.ReopenMs)
		} else {
			assert.Positive(t, r.Ops)
		}
	}
	// The order rotates by one per repetition.
	slot := map[[2]string]int{}
	for _, r := range results {
		if r.Workload == "seqread-warm" {
			slot[[2]string{fmt.Sprint(r.Rep), r.Adapter}] = r.Slot
		}
	}
	assert.Equal(t, map[[2]string]int{
		{"1", "segstore"}: 0, {"1", "raft-wal"}: 1, {"1", "pagelog"}: 2,
		{"2", "segstore"}: 2, {"2", "raft-wal"}: 0, {"2", "pagelog"}: 1,
	}, slot)
	for _, f := range []string{"summary.md", "ratio.svg", "ratio.png"} {
		st, err := os.Stat(filepath.Join(c.out, f))
		require.NoError(t, err)
		assert.Positive(t, st.Size(), f)
	}
	entries, err := os.ReadDir(filepath.Join(c.root, "append"))
	require.NoError(t, err)
	assert.Empty(t, entries, "each append measurement's store is removed after it")
}
