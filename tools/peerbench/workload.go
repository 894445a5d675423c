package main

import (
	"encoding/binary"
	"fmt"
	"math/rand"
	"sync"
	"time"
)

// Params are what the parent tells a child process to do: one measurement
// (or the build of a data set, or holding a store open to be killed).
type Params struct {
	Workload string `json:"workload"`
	Kind     string `json:"kind"` // append, seqread, randread, reopen, build, hold
	Adapter  string `json:"adapter"`
	Dir      string `json:"dir"`
	// RecordSize and Batch shape appends (and the build of a data set).
	RecordSize int `json:"record_size"`
	Batch      int `json:"batch,omitempty"`
	// Records: appends write at most this many records; random reads
	// make this many reads; a build writes exactly this many.
	Records int64 `json:"records"`
	// Seconds: appends and random reads stop at this many seconds if
	// Records are not done by then (the result says how many were).
	Seconds float64 `json:"seconds,omitempty"`
	// Workers: concurrent appenders or readers (1 when 0).
	Workers int    `json:"workers,omitempty"`
	Dist    string `json:"dist,omitempty"` // uniform or zipf (random reads)
	Hot     bool   `json:"hot,omitempty"`  // read every record once before timing
	Seed    int64  `json:"seed,omitempty"`
	// DataSet is the records the data set was built with (the read and
	// reopen workloads check it holds at least these).
	DataSet int64 `json:"data_set,omitempty"`
	// WorkingSet is the bytes the workload reads, for the adapter whose
	// cache is sized to hold them.
	WorkingSet int64 `json:"working_set,omitempty"`
}

// Result is one measurement, as a JSON line of the raw output.
type Result struct {
	Run      string `json:"run"`
	Rep      int    `json:"rep"`
	Slot     int    `json:"slot"` // the adapter's place in this repetition's order
	Workload string `json:"workload"`
	Adapter  string `json:"adapter"`
	// Status is "ok", or why there is no number: "n/a", "cold unavailable",
	// "error".
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`

	Ops     int64   `json:"ops"` // records appended or read
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	OpsPerS float64 `json:"ops_per_s"`
	MiBPerS float64 `json:"mib_per_s"`
	// P50us and P99us: per batch (appends) or per read, in microseconds.
	P50us float64 `json:"p50_us,omitempty"`
	P99us float64 `json:"p99_us,omitempty"`
	// OpenMs and ReopenMs (reopen): open alone, and open + first + last +
	// read of the last record.
	OpenMs   float64 `json:"open_ms,omitempty"`
	ReopenMs float64 `json:"reopen_ms,omitempty"`
	Segments int     `json:"segments,omitempty"` // segstore: segment files at the end
	Capped   bool    `json:"capped,omitempty"`   // stopped by Seconds before Records were done

	MaxRSSKiB int64   `json:"max_rss_kib"`
	UserS     float64 `json:"user_s"`
	SysS      float64 `json:"sys_s"`
}

// runChild performs p in this process and returns its result (without the
// fields the parent fills in from the process: RSS and CPU).
func runChild(p Params) (Result, error) {
	a, err := findAdapter(p.Adapter)
	if err != nil {
		return Result{}, err
	}
	r := Result{Workload: p.Workload, Adapter: p.Adapter, Status: "ok"}
	switch p.Kind {
	case "append":
		err = doAppend(a, p, &r)
	case "build":
		err = doBuild(a, p, &r)
	case "seqread":
		err = doSeqRead(a, p, &r)
	case "randread":
		err = doRandRead(a, p, &r)
	case "reopen":
		err = doReopen(a, p, &r)
	default:
		err = fmt.Errorf("unknown kind %q", p.Kind)
	}
	return r, err
}

func workers(p Params) int { return max(1, p.Workers) }

func (r *Result) rate(ops, bytes int64, d time.Duration) {
	r.Ops, r.Bytes, r.Seconds = ops, bytes, d.Seconds()
	if d > 0 {
		r.OpsPerS = float64(ops) / d.Seconds()
		r.MiBPerS = float64(bytes) / (1 << 20) / d.Seconds()
	}
}

// measured records what parallel workers did: counts and latencies, in
// time d; want is what they would have done without the time cap.
func (r *Result) measured(counts []int64, lat []time.Duration, d time.Duration, want int64, size int) {
	total := sum(counts)
	r.rate(total, total*int64(size), d)
	r.latencies(lat)
	r.Capped = total < want
}

func (r *Result) latencies(ds []time.Duration) {
	r.P50us = float64(percentile(ds, 0.50).Nanoseconds()) / 1e3
	r.P99us = float64(percentile(ds, 0.99).Nanoseconds()) / 1e3
}

func noteSegments(s Store, r *Result) {
	if ss, ok := s.(*segstoreStore); ok {
		r.Segments = ss.segments()
	}
}

// doAppend appends batches of p.Batch records of p.RecordSize bytes into a
// new store until p.Records are written or p.Seconds pass, from
// p.Workers goroutines. One appender files each record under the index the
// store gives it, checked; many tag each record with (appender, sequence)
// instead, since the index is only known once Append returns, and the log
// is read back after the timed part to prove every record is there once.
func doAppend(a Adapter, p Params, r *Result) error {
	n := workers(p)
	if n > 1 && a.Concurrency == NoConcurrency {
		return fmt.Errorf("%s takes one appender", a.Name)
	}
	s, err := a.Open(p.Dir, p.Records*int64(p.RecordSize))
	if err != nil {
		return fmt.Errorf("opening %s in %s: %w", a.Name, p.Dir, err)
	}
	defer s.Close()
	per := p.Records / int64(n)
	deadline := time.Now().Add(time.Duration(p.Seconds * float64(time.Second)))
	counts, lat, d, err := parallel(n, func(w int) (count int64, lat []time.Duration, err error) {
		batch := make([][]byte, p.Batch)
		for i := range batch {
			batch[i] = make([]byte, p.RecordSize)
		}
		lat = make([]time.Duration, 0, per/int64(p.Batch)+1)
		next := uint64(1) // the index the next record must get (one appender)
		for count+int64(p.Batch) <= per {
			if p.Seconds > 0 && time.Now().After(deadline) {
				break
			}
			for i, rec := range batch {
				if n == 1 {
					fillRecord(rec, next+uint64(i))
				} else {
					fillRecord(rec, tag(w, count+int64(i)))
				}
			}
			t := time.Now()
			first, err := s.Append(batch)
			lat = append(lat, time.Since(t))
			if err != nil {
				return count, lat, fmt.Errorf("append of batch %d: %w", len(lat), err)
			}
			if n == 1 && first != next {
				return count, lat, fmt.Errorf("append of batch %d: the store gave index %d, want %d", len(lat), first, next)
			}
			next += uint64(p.Batch)
			count += int64(p.Batch)
		}
		return count, lat, nil
	})
	if err != nil {
		return err
	}
	r.measured(counts, lat, d, per*int64(n), p.RecordSize)
	noteSegments(s, r)
	if n > 1 {
		return verifyTagged(s, n, counts, p.RecordSize)
	}
	return nil
}

// parallel runs body for workers 0..n-1 at once and gathers what each
// counted, all their latencies and the time they took together; the first
// worker's error, if any, is the error.
func parallel(n int, body func(w int) (int64, []time.Duration, error)) (counts []int64, all []time.Duration, took time.Duration, err error) {
	counts = make([]int64, n)
	lats := make([][]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for w := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			counts[w], lats[w], errs[w] = body(w)
		}()
	}
	wg.Wait()
	took = time.Since(start)
	for w := range n {
		if errs[w] != nil {
			return nil, nil, took, errs[w]
		}
		all = append(all, lats[w]...)
	}
	return counts, all, took, nil
}

func sum(vs []int64) (t int64) {
	for _, v := range vs {
		t += v
	}
	return t
}

// tag names record seq of appender w when many append at once: the top
// bit set, so that no tag is a small index.
func tag(w int, seq int64) uint64 { return 1<<63 | uint64(w)<<40 | uint64(seq) }

// verifyTagged reads every record of a log written by n tagging appenders
// and checks that appender w's records are all there, once each, in order.
func verifyTagged(s Store, n int, counts []int64, size int) error {
	first, last, err := bounds(s)
	if err != nil {
		return err
	}
	var want int64
	for _, c := range counts {
		want += c
	}
	if got := int64(last - first + 1); first == 0 || got != want {
		return fmt.Errorf("the log holds [%d, %d], want %d records", first, last, want)
	}
	seen := make([]int64, n)
	var buf []byte
	for i := first; i <= last; i++ {
		buf, err = s.Read(i, buf[:0])
		if err != nil {
			return fmt.Errorf("reading back index %d: %w", i, err)
		}
		if len(buf) < recordHeader {
			return fmt.Errorf("reading back index %d: %d bytes, want %d", i, len(buf), size)
		}
		t := binary.LittleEndian.Uint64(buf)
		w := int(t >> 40 & (1<<23 - 1))
		if t>>63 != 1 || w >= n || int64(t&(1<<40-1)) != seen[w] {
			return fmt.Errorf("reading back index %d: tag %#x is not the next record of any appender", i, t)
		}
		if err := checkRecord(buf, t, size); err != nil {
			return fmt.Errorf("reading back index %d: %w", i, err)
		}
		seen[w]++
	}
	return nil
}

func bounds(s Store) (first, last uint64, err error) {
	if first, err = s.First(); err != nil {
		return 0, 0, fmt.Errorf("first index: %w", err)
	}
	if last, err = s.Last(); err != nil {
		return 0, 0, fmt.Errorf("last index: %w", err)
	}
	return first, last, nil
}

// doBuild writes the data set of the read workloads: exactly p.Records
// records, in batches of p.Batch, into a new store.
func doBuild(a Adapter, p Params, r *Result) error {
	s, err := a.Open(p.Dir, p.Records*int64(p.RecordSize))
	if err != nil {
		return fmt.Errorf("opening %s in %s: %w", a.Name, p.Dir, err)
	}
	batch := make([][]byte, p.Batch)
	for i := range batch {
		batch[i] = make([]byte, p.RecordSize)
	}
	start := time.Now()
	for next := int64(1); next <= p.Records; {
		b := batch[:min(int64(p.Batch), p.Records-next+1)]
		for i, rec := range b {
			fillRecord(rec, uint64(next)+uint64(i))
		}
		first, err := s.Append(b)
		if err != nil {
			s.Close()
			return fmt.Errorf("building the data set at index %d: %w", next, err)
		}
		if first != uint64(next) {
			s.Close()
			return fmt.Errorf("building the data set: the store gave index %d, want %d", first, next)
		}
		next += int64(len(b))
	}
	r.rate(p.Records, p.Records*int64(p.RecordSize), time.Since(start))
	noteSegments(s, r)
	return s.Close()
}

// openDataSet opens a built data set and checks it holds what was built
// (a hold child may have added records at its end).
func openDataSet(a Adapter, p Params) (Store, uint64, uint64, error) {
	s, err := a.Open(p.Dir, p.WorkingSet)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("opening %s in %s: %w", a.Name, p.Dir, err)
	}
	first, last, err := bounds(s)
	if err == nil && (first != 1 || int64(last) < p.DataSet) {
		err = fmt.Errorf("the data set holds [%d, %d], want [1, %d] at least", first, last, p.DataSet)
	}
	if err != nil {
		s.Close()
		return nil, 0, 0, err
	}
	return s, first, last, nil
}

// readRange reads and checks every record in [first, last] in order.
func readRange(s Store, first, last uint64, size int, lat *[]time.Duration) error {
	var buf []byte
	var err error
	for i := first; i <= last; i++ {
		t := time.Now()
		buf, err = s.Read(i, buf[:0])
		if lat != nil {
			*lat = append(*lat, time.Since(t))
		}
		if err != nil {
			return fmt.Errorf("reading index %d: %w", i, err)
		}
		if err := checkRecord(buf, i, size); err != nil {
			return err
		}
	}
	return nil
}

// doSeqRead reads every record of the data set in order, from a fresh
// process (the parent has dropped or warmed the page cache), stopping at
// p.Seconds.
func doSeqRead(a Adapter, p Params, r *Result) error {
	s, first, last, err := openDataSet(a, p)
	if err != nil {
		return err
	}
	defer s.Close()
	n := int64(last - first + 1)
	lat := make([]time.Duration, 0, n)
	start := time.Now()
	deadline := start.Add(time.Duration(p.Seconds * float64(time.Second)))
	// In steps of 4096 records, checking the time cap between them.
	var done int64
	for i := first; i <= last; i += 4096 {
		if p.Seconds > 0 && time.Now().After(deadline) {
			break
		}
		end := min(last, i+4095)
		if err := readRange(s, i, end, p.RecordSize, &lat); err != nil {
			return err
		}
		done += int64(end - i + 1)
	}
	r.rate(done, done*int64(p.RecordSize), time.Since(start))
	r.latencies(lat)
	r.Capped = done < n
	noteSegments(s, r)
	return nil
}

// readIndexes draws n indexes in [first, last]: uniform, or Zipf with
// exponent 1.1 over the distance from last (the newest records hottest).
func readIndexes(dist string, seed int64, first, last uint64, n int64) ([]uint64, error) {
	rng := rand.New(rand.NewSource(seed))
	span := last - first + 1
	out := make([]uint64, n)
	switch dist {
	case "uniform":
		for i := range out {
			out[i] = first + uint64(rng.Int63n(int64(span)))
		}
	case "zipf":
		z := rand.NewZipf(rng, 1.1, 1, span-1)
		for i := range out {
			out[i] = last - z.Uint64()
		}
	default:
		return nil, fmt.Errorf("unknown distribution %q (uniform or zipf)", dist)
	}
	return out, nil
}

// doRandRead makes p.Records point reads at indexes drawn from p.Dist, by
// p.Workers readers, stopping at p.Seconds; hot first reads every record
// once in this process.
func doRandRead(a Adapter, p Params, r *Result) error {
	s, first, last, err := openDataSet(a, p)
	if err != nil {
		return err
	}
	defer s.Close()
	if p.Hot {
		if err := readRange(s, first, last, p.RecordSize, nil); err != nil {
			return fmt.Errorf("reading every record before timing: %w", err)
		}
	}
	n := workers(p)
	per := p.Records / int64(n)
	lists := make([][]uint64, n)
	for w := range n {
		if lists[w], err = readIndexes(p.Dist, p.Seed+int64(w), first, last, per); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(time.Duration(p.Seconds * float64(time.Second)))
	counts, lat, d, err := parallel(n, func(w int) (count int64, lat []time.Duration, err error) {
		lat = make([]time.Duration, 0, per)
		var buf []byte
		for _, i := range lists[w] {
			t := time.Now()
			if p.Seconds > 0 && t.After(deadline) {
				break
			}
			buf, err = s.Read(i, buf[:0])
			lat = append(lat, time.Since(t))
			if err != nil {
				return count, lat, fmt.Errorf("reading index %d: %w", i, err)
			}
			if err := checkRecord(buf, i, p.RecordSize); err != nil {
				return count, lat, err
			}
			count++
		}
		return count, lat, nil
	})
	if err != nil {
		return err
	}
	r.measured(counts, lat, d, per*int64(n), p.RecordSize)
	return nil
}

// doReopen opens the data set, asks for its first and last index and reads
// the last record: what a restarted user of the log does first.
func doReopen(a Adapter, p Params, r *Result) error {
	start := time.Now()
	s, err := a.Open(p.Dir, p.WorkingSet)
	if err != nil {
		return fmt.Errorf("opening %s in %s: %w", a.Name, p.Dir, err)
	}
	opened := time.Since(start)
	first, last, err := bounds(s)
	if err == nil && (first != 1 || int64(last) < p.DataSet) {
		err = fmt.Errorf("the reopened data set holds [%d, %d], want [1, %d] at least", first, last, p.DataSet)
	}
	if err == nil {
		var rec []byte
		if rec, err = s.Read(last, nil); err == nil {
			err = checkRecord(rec, last, p.RecordSize)
		}
	}
	total := time.Since(start)
	if err != nil {
		s.Close()
		return err
	}
	r.OpenMs = float64(opened.Microseconds()) / 1e3
	r.ReopenMs = float64(total.Microseconds()) / 1e3
	r.Ops, r.Seconds = 1, total.Seconds()
	noteSegments(s, r)
	return s.Close()
}

// doHold opens the data set, appends one durable batch of one record, says
// "ready" on stdout and waits to be killed: the parent SIGKILLs it, so that
// the next open finds a log that was not closed.
func doHold(a Adapter, p Params, ready func()) error {
	s, _, last, err := openDataSet(a, p)
	if err != nil {
		return err
	}
	rec := make([]byte, p.RecordSize)
	fillRecord(rec, last+1)
	first, err := s.Append([][]byte{rec})
	if err != nil {
		return fmt.Errorf("appending before the kill: %w", err)
	}
	if first != last+1 {
		return fmt.Errorf("appending before the kill: the store gave index %d, want %d", first, last+1)
	}
	ready()
	// Sleep rather than block forever: with no goroutine left to run (the
	// page-cache log has none), the runtime would end a blocked process
	// itself, as a deadlock, before the SIGKILL.
	time.Sleep(childTimeout)
	return fmt.Errorf("not killed within %v of saying ready", childTimeout)
}
