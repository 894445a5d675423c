package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// FioResult is one fio job's result, a JSON line of the raw output.
type FioResult struct {
	Run     string  `json:"run"`
	Rep     int     `json:"rep"`
	Fio     string  `json:"fio"` // the job's name
	MiBPerS float64 `json:"mib_per_s"`
	IOPS    float64 `json:"iops"`
	P50us   float64 `json:"p50_us"`
	P99us   float64 `json:"p99_us"`
}

// fioJob is one measurement of the device: what the stores are up against.
type fioJob struct {
	Name, Desc string
	Write      bool
	Args       []string
}

var fioJobs = []fioJob{
	{"seqwrite-1m-fdatasync", "sequential O_DIRECT 1 MiB writes, fdatasync after each", true,
		[]string{"--rw=write", "--bs=1m", "--ioengine=psync", "--fdatasync=1"}},
	{"syncwrite-4k-fdatasync", "sequential O_DIRECT 4 KiB writes, fdatasync after each (the floor of a 1 KiB durable append)", true,
		[]string{"--rw=write", "--bs=4k", "--ioengine=psync", "--fdatasync=1"}},
	{"seqread-1m", "sequential O_DIRECT 1 MiB reads", false,
		[]string{"--rw=read", "--bs=1m", "--ioengine=psync"}},
	{"randread-4k-qd1", "random O_DIRECT 4 KiB reads, queue depth 1", false,
		[]string{"--rw=randread", "--bs=4k", "--ioengine=psync"}},
	{"randread-4k-qd16", "random O_DIRECT 4 KiB reads, queue depth 16 (libaio)", false,
		[]string{"--rw=randread", "--bs=4k", "--ioengine=libaio", "--iodepth=16"}},
}

// runFio measures the device under dir (the data's filesystem) with each
// fio job, on one file it lays out first and removes after.
func runFio(dir string, rep int, z Sizes) ([]FioResult, error) {
	if _, err := exec.LookPath("fio"); err != nil {
		return nil, fmt.Errorf("fio unavailable (apt-get install -y fio): the device's limits are not measured")
	}
	file := filepath.Join(dir, "fio.dat")
	defer os.Remove(file)
	size := strconv.FormatInt(z.FioBytes, 10)
	layout := exec.Command("fio", "--name=layout", "--filename="+file, "--size="+size, "--rw=write", "--bs=1m", "--direct=1", "--ioengine=psync", "--output=/dev/null")
	if out, err := layout.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("fio layout of %s: %v: %s", file, err, tail(string(out), 500))
	}
	var rs []FioResult
	for _, j := range fioJobs {
		args := append([]string{"--name=" + j.Name, "--filename=" + file, "--size=" + size, "--direct=1",
			"--time_based", "--runtime=" + strconv.Itoa(z.FioSeconds), "--output-format=json"}, j.Args...)
		out, err := exec.Command("fio", args...).Output()
		if err != nil {
			return rs, fmt.Errorf("fio %s: %v", j.Name, err)
		}
		r, err := parseFio(out, j.Write)
		if err != nil {
			return rs, fmt.Errorf("fio %s: %w", j.Name, err)
		}
		r.Rep, r.Fio = rep, j.Name
		rs = append(rs, r)
	}
	return rs, nil
}

// parseFio reads the first job of fio's JSON output (fio may print
// warnings before it).
func parseFio(out []byte, write bool) (FioResult, error) {
	for i, b := range out {
		if b == '{' {
			out = out[i:]
			break
		}
	}
	type side struct {
		BwBytes float64 `json:"bw_bytes"`
		IOPS    float64 `json:"iops"`
		Clat    struct {
			Percentile map[string]float64 `json:"percentile"`
		} `json:"clat_ns"`
	}
	var doc struct {
		Jobs []struct {
			Read  side `json:"read"`
			Write side `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return FioResult{}, fmt.Errorf("parsing fio's JSON: %w", err)
	}
	if len(doc.Jobs) == 0 {
		return FioResult{}, fmt.Errorf("fio's JSON has no job")
	}
	s := doc.Jobs[0].Read
	if write {
		s = doc.Jobs[0].Write
	}
	return FioResult{
		MiBPerS: s.BwBytes / (1 << 20), IOPS: s.IOPS,
		P50us: s.Clat.Percentile["50.000000"] / 1e3, P99us: s.Clat.Percentile["99.000000"] / 1e3,
	}, nil
}
