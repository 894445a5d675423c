// Package waltest holds the baselines that segstore's benchmarks compare
// against, so every benchmark measures the same thing.
package waltest

import (
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// PageCacheLog is the plain log people write by hand: the same frames as
// package wal, written through the page cache to a growing file, one write
// and one fdatasync per batch under a mutex (no group commit, no direct
// I/O). It is a benchmark baseline, not a log to use: it has no recovery.
type PageCacheLog struct {
	mu   sync.Mutex
	f    *os.File
	pos  int64
	next uint64
	buf  []byte
}

// NewPageCacheLog creates the file at path.
func NewPageCacheLog(path string) (*PageCacheLog, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, err
	}
	return &PageCacheLog{f: f, pos: wal.DataStart}, nil
}

// Append writes one frame and fdatasyncs it.
func (l *PageCacheLog) Append(records ...[]byte) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := wal.FrameSize(wal.PayloadSize(records))
	if cap(l.buf) < n {
		l.buf = make([]byte, n)
	}
	wal.EncodeFrame(l.buf[:n], 1, l.pos, -1, l.next, 0, records)
	if _, err := l.f.WriteAt(l.buf[:n], l.pos); err != nil {
		return 0, err
	}
	if err := blockdev.Datasync(l.f); err != nil {
		return 0, err
	}
	first := l.next
	l.pos += int64(n)
	l.next += uint64(len(records))
	return first, nil
}

// Close closes the file.
func (l *PageCacheLog) Close() error { return l.f.Close() }

// Appender is what the append benchmarks drive: a wal.Writer, an
// engine.Log, or the PageCacheLog baseline.
type Appender interface {
	Append(records ...[]byte) (uint64, error)
}

// BenchAppends runs b.N appends of recs, from one goroutine or, with
// appenders > 1, from that many goroutines at once, and reports records/s,
// the bytes per op (b.SetBytes) and the latency of each append call
// (batch) at the median, the 99th percentile and the largest, in µs
// (p50-µs, p99-µs, max-µs): a tail of stalls (a segment roll, a flush
// waiting behind other I/O) shows in p99 and max, not in the mean. Setup
// belongs before the call.
func BenchAppends(b *testing.B, a Appender, recs [][]byte, appenders int) {
	size := 0
	for _, r := range recs {
		size += len(r)
	}
	b.SetBytes(int64(size))
	var mu sync.Mutex
	var lat []time.Duration
	b.ResetTimer()
	if appenders <= 1 {
		lat = make([]time.Duration, 0, b.N)
		for i := 0; i < b.N; i++ {
			t := time.Now()
			if _, err := a.Append(recs...); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t))
		}
	} else {
		b.SetParallelism(max(1, appenders/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			var mine []time.Duration
			for pb.Next() {
				t := time.Now()
				if _, err := a.Append(recs...); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(t))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*len(recs))/b.Elapsed().Seconds(), "records/s")
	if len(lat) > 0 {
		slices.Sort(lat)
		at := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))]) / float64(time.Microsecond) }
		b.ReportMetric(at(0.5), "p50-µs")
		b.ReportMetric(at(0.99), "p99-µs")
		b.ReportMetric(at(1), "max-µs")
	}
}
