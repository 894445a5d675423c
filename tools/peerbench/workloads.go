package main

import (
	"fmt"
	"slices"
	"strings"
)

// Sizes scale the workloads: quick mode for a check in about a minute,
// full mode for numbers worth quoting.
type Sizes struct {
	// AppendSeconds caps each append measurement; AppendBytes is what it
	// writes if it finishes first (1 KiB x1 and 16 appenders: AppendSmall
	// records).
	AppendSeconds float64
	AppendBytes   int64
	AppendSmall   int64
	// DataSet is the records (of 1 KiB, in batches of 1024) of the log
	// that the read and reopen workloads use.
	DataSet int64
	// Reads is the random reads per measurement, capped at ReadSeconds;
	// sequential reads of the data set are capped at twice that.
	Reads       int64
	ReadSeconds float64
	// FioSeconds and FioBytes size each fio job.
	FioSeconds int
	FioBytes   int64
	Reps       int
}

var quickSizes = Sizes{
	AppendSeconds: 1, AppendBytes: 160 << 20, AppendSmall: 20_000,
	DataSet: 128 << 10, Reads: 20_000, ReadSeconds: 1,
	FioSeconds: 1, FioBytes: 256 << 20, Reps: 1,
}

var fullSizes = Sizes{
	AppendSeconds: 15, AppendBytes: 1 << 30, AppendSmall: 200_000,
	DataSet: 1 << 20, Reads: 200_000, ReadSeconds: 5,
	FioSeconds: 5, FioBytes: 2 << 30, Reps: 3,
}

// dataRecord and dataBatch shape the data set of the read workloads.
const (
	dataRecord = 1 << 10
	dataBatch  = 1024
	readers    = 16
	appenders  = 16
)

// Workload is one row of the summary.
type Workload struct {
	Name string
	Kind string
	// Unit of the summary's number, and whether higher is better.
	Unit   string
	Higher bool
	// Temp is the page cache before the child starts: "cold" (dropped),
	// "warm" (the data set's files read), or "" (as left). Kill: the store
	// was SIGKILLed with the data set open, before the child.
	Temp string
	Kill bool
	// Concurrent: the workload needs an adapter that takes concurrent
	// appends.
	Concurrent bool
	Desc       string
	params     func(z Sizes) Params
}

// metric is the number of r that the summary shows for w.
func (w Workload) metric(r Result) float64 {
	switch w.Unit {
	case "MiB/s":
		return r.MiBPerS
	case "ms":
		return r.ReopenMs
	default:
		return r.OpsPerS
	}
}

func appendWorkload(name string, size, batch, writers int, desc string) Workload {
	return Workload{
		Name: name, Kind: "append", Unit: "MiB/s", Higher: true, Concurrent: writers > 1, Desc: desc,
		params: func(z Sizes) Params {
			records := z.AppendBytes / int64(size)
			if batch == 1 { // one record per fdatasync: sized in records
				records = z.AppendSmall
			}
			records -= records % int64(batch*writers)
			return Params{RecordSize: size, Batch: batch, Records: records, Seconds: z.AppendSeconds, Workers: writers}
		},
	}
}

func randWorkload(dist, temp string, workers int) Workload {
	name := fmt.Sprintf("randread-%s-%s", dist, temp)
	who := "one reader"
	if workers > 1 {
		name += fmt.Sprintf("-c%d", workers)
		who = fmt.Sprintf("%d concurrent readers", workers)
	}
	what := map[string]string{"uniform": "uniform", "zipf": "Zipf(1.1), newest hottest,"}[dist]
	how := map[string]string{
		"cold": "page cache dropped",
		"warm": "page cache warm",
		"hot":  "page cache warm and every record read once in the same process first",
	}[temp]
	return Workload{
		Name: name, Kind: "randread", Unit: "reads/s", Higher: true, Temp: temp,
		Desc: fmt.Sprintf("%s random 1 KiB point reads of the data set by %s, %s", what, who, how),
		params: func(z Sizes) Params {
			return Params{RecordSize: dataRecord, Records: z.Reads, Seconds: z.ReadSeconds, Workers: workers, Dist: dist, Hot: temp == "hot"}
		},
	}
}

func reopenWorkload(kill bool, temp string) Workload {
	name, how := "reopen-clean-"+temp, "after a clean close"
	if kill {
		name, how = "reopen-kill-"+temp, "after a SIGKILL (one batch appended, then killed)"
	}
	return Workload{
		Name: name, Kind: "reopen", Unit: "ms", Temp: temp, Kill: kill,
		Desc:   fmt.Sprintf("open + first + last + read of the last record of the data set %s, page cache %s", how, temp),
		params: func(z Sizes) Params { return Params{RecordSize: dataRecord} },
	}
}

// workloads are every workload, in the summary's order.
var workloads = func() []Workload {
	ws := []Workload{
		appendWorkload("append-1k-x1", 1<<10, 1, 1, "durable appends of one 1 KiB record per batch"),
		appendWorkload("append-1k-x64", 1<<10, 64, 1, "durable appends of 64 x 1 KiB records per batch"),
		appendWorkload("append-64k-x16", 64<<10, 16, 1, "durable appends of 16 x 64 KiB records per batch"),
		appendWorkload("append-1k-x1024", 1<<10, 1024, 1, "bulk load: durable appends of 1024 x 1 KiB records per batch (the data set's shape) into a new store"),
		appendWorkload("append-1k-x1-c16", 1<<10, 1, appenders, "16 concurrent appenders, each one 1 KiB record per durable batch"),
	}
	for _, temp := range []string{"cold", "warm"} {
		ws = append(ws, Workload{
			Name: "seqread-" + temp, Kind: "seqread", Unit: "MiB/s", Higher: true, Temp: temp,
			Desc:   "point reads of every record of the data set in order (stopping at the time cap), page cache " + temp,
			params: func(z Sizes) Params { return Params{RecordSize: dataRecord, Seconds: 2 * z.ReadSeconds} },
		})
	}
	for _, workers := range []int{1, readers} {
		for _, dist := range []string{"uniform", "zipf"} {
			for _, temp := range []string{"cold", "warm", "hot"} {
				ws = append(ws, randWorkload(dist, temp, workers))
			}
		}
	}
	for _, kill := range []bool{false, true} {
		for _, temp := range []string{"cold", "warm"} {
			ws = append(ws, reopenWorkload(kill, temp))
		}
	}
	return ws
}()

// needsDataSet: the workload reads the data set built before the
// repetitions.
func (w Workload) needsDataSet() bool { return w.Kind != "append" }

// selectWorkloads parses a comma-separated list of names or prefixes: a
// name selects that workload alone, a prefix of whole dash-separated words
// every workload it starts ("append", "randread-zipf"); "" or "all" every
// one.
func selectWorkloads(list string) ([]Workload, error) {
	if list == "" || list == "all" {
		return workloads, nil
	}
	chosen := map[string]bool{}
	for _, pat := range strings.Split(list, ",") {
		pat = strings.TrimSpace(pat)
		found := slices.ContainsFunc(workloads, func(w Workload) bool { return w.Name == pat })
		if found {
			chosen[pat] = true
		} else {
			prefix := strings.TrimSuffix(pat, "-") + "-"
			for _, w := range workloads {
				if strings.HasPrefix(w.Name, prefix) {
					chosen[w.Name], found = true, true
				}
			}
		}
		if !found {
			var names []string
			for _, w := range workloads {
				names = append(names, w.Name)
			}
			return nil, fmt.Errorf("no workload matches %q: choose names or prefixes (append, seqread, randread, randread-zipf, reopen) of %s", pat, strings.Join(names, ", "))
		}
	}
	var out []Workload
	for _, w := range workloads {
		if chosen[w.Name] {
			out = append(out, w)
		}
	}
	return out, nil
}
