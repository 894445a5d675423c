package engine

import (
	"math"
	"sync/atomic"
	"time"
)

// Histogram is a distribution of observations in fixed buckets, as the
// Prometheus exposition wants it.
type Histogram struct {
	Bounds []float64 // upper bounds of the buckets, ascending
	Counts []uint64  // observations <= each bound (cumulative)
	Count  uint64    // all observations
	Sum    float64
}

// hist collects a Histogram with atomic counters.
type hist struct {
	bounds []float64
	counts []atomic.Uint64 // per bucket (not cumulative), plus one for +Inf
	sum    atomic.Uint64   // float64 bits
}

func newHist(bounds []float64) *hist {
	return &hist{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

func (h *hist) observe(v float64) {
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

func (h *hist) snapshot() Histogram {
	out := Histogram{Bounds: h.bounds, Counts: make([]uint64, len(h.bounds)), Sum: math.Float64frombits(h.sum.Load())}
	for i := range h.counts {
		n := h.counts[i].Load()
		out.Count += n
		if i < len(h.bounds) {
			out.Counts[i] = out.Count
		}
	}
	return out
}

// Buckets: fdatasync latency in seconds, 50 µs to 1 s; group-commit
// batches in appends per flush, 1 to 4096.
var (
	syncBuckets  = []float64{50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1}
	batchBuckets = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096}
)

// noteFlush records one flush of the wal writer.
func (l *Log) noteFlush(appends int, sync time.Duration) {
	l.batchHist.observe(float64(appends))
	if sync > 0 {
		l.syncHist.observe(sync.Seconds())
	}
}
