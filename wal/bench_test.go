package wal_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
	"github.com/segstore/segstore/wal/waltest"
)

// BenchmarkAppend is the durable append matrix: record size × batch ×
// concurrent appenders, each op one Append of a batch, every Append durable
// (fdatasync) before it returns. Implementations, side by side:
//
//	direct    this package's writer, O_DIRECT, file pre-zeroed outside the timer
//	buffered  this package's writer on the buffered fallback (page cache), pre-zeroed
//	pagecache a plain page-cache log: same framing, a mutex, write + fdatasync per
//	          batch on a growing file (what a simple log does; no group commit)
//
// Run: go test ./wal -run NONE -bench BenchmarkAppend -count 5 | tee new.txt; benchstat new.txt
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{128, 1 << 10, 64 << 10} {
		for _, batchLen := range []int{1, 16, 64} {
			if size == 64<<10 && batchLen == 64 {
				continue // 4 MiB batches: beyond the default MaxWrite
			}
			for _, appenders := range []int{1, 16} {
				for _, impl := range []string{"direct", "buffered", "pagecache"} {
					name := fmt.Sprintf("size=%d/batch=%d/appenders=%d/impl=%s", size, batchLen, appenders, impl)
					b.Run(name, func(b *testing.B) { benchAppend(b, impl, size, batchLen, appenders) })
				}
			}
		}
	}
}

type appender interface {
	waltest.Appender
	Close() error
}

func benchAppend(b *testing.B, impl string, size, batchLen, appenders int) {
	recs := make([][]byte, batchLen)
	for i := range recs {
		recs[i] = bytes.Repeat([]byte{byte(i + 1)}, size)
	}
	path := filepath.Join(b.TempDir(), "bench.wal")
	perOp := int64(wal.FrameSize(wal.PayloadSize(recs)))
	var w appender
	var stats func() wal.Stats
	switch impl {
	case "direct", "buffered":
		dev, err := blockdev.Open(path, blockdev.Options{Create: true, Buffered: impl == "buffered"})
		if err != nil {
			b.Fatal(err)
		}
		defer dev.Close()
		ww, err := wal.Create(dev, 0, wal.Options{Preallocate: perOp*int64(b.N) + 8<<20, PreZero: true, MaxWrite: 8 << 20})
		if err != nil {
			b.Fatal(err)
		}
		w, stats = ww, ww.Stats
	case "pagecache":
		pl, err := waltest.NewPageCacheLog(path)
		if err != nil {
			b.Fatal(err)
		}
		w = pl
	}
	waltest.BenchAppends(b, w, recs, appenders)
	if stats != nil {
		st := stats()
		if st.Writes > 0 {
			b.ReportMetric(float64(st.Appends)/float64(st.Writes), "appends/flush")
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
}
