package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
)

// BenchmarkPointReadFormat: random point reads of 1 KiB records of a log
// written in batches of 1024 (raft's StoreLogs), in a store of wal format
// version 2 (records found through a frame-granular index and verified by
// their frame: a cold read reads the whole 1 MiB frame) and one of version
// 3 (record checksums, a record-granular index), in one run. cold: every
// read misses the cache (the segments' cache namespaces are made anew
// before each); warm: the cache holds the log. Device bytes per read are
// reported.
//
//	go test ./engine -run NONE -bench BenchmarkPointReadFormat -count 3
func BenchmarkPointReadFormat(b *testing.B) {
	const batches, batch, size = 24, 1024, 1 << 10
	for _, v := range []uint32{2, 3} {
		d, l := pointBenchLog(b, v, batches, batch, size)
		n := uint64(batches * batch)
		for _, mode := range []string{"cold", "warm"} {
			b.Run(fmt.Sprintf("mode=%s/v=%d", mode, v), func(b *testing.B) {
				r := rand.New(rand.NewPCG(1, 2))
				if mode == "warm" {
					for off := range n {
						if _, err := l.Read(off, nil); err != nil {
							b.Fatal(err)
						}
					}
					l.cache.Wait()
				}
				var buf []byte
				before := d.bytes.Load()
				b.SetBytes(size)
				for b.Loop() {
					if mode == "cold" {
						for _, s := range *l.segs.Load() {
							s.ns = l.cache.NewNamespace()
						}
						l.tail.Store(nil)
					}
					var err error
					if buf, err = l.Read(r.Uint64N(n), buf[:0]); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(d.bytes.Load()-before)/float64(b.N), "device-B/read")
			})
		}
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// pointBenchLog writes a log of format version v on the real disk (O_DIRECT)
// in batches, seals it, and reopens it, counting device bytes read.
func pointBenchLog(b *testing.B, v uint32, batches, batch, size int) (*countingDir, *Log) {
	path := b.TempDir()
	formatVersion = v
	defer func() { formatVersion = 0 }()
	o := DefaultOptions()
	o.Logger, o.CacheBytes = quiet, 256<<20
	l, err := Open(path, o)
	if err != nil {
		b.Fatal(err)
	}
	recs := make([][]byte, batch)
	for i := range recs {
		recs[i] = make([]byte, size)
	}
	for range batches {
		if _, err := l.Append(recs...); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Roll(); err != nil {
		b.Fatal(err)
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	dir, err := blockdev.OpenDir(path, false)
	if err != nil {
		b.Fatal(err)
	}
	d := &countingDir{Dir: dir}
	o.Dir = d
	if l, err = Open(path, o); err != nil {
		b.Fatal(err)
	}
	if _, err := l.Read(0, nil); err != nil { // loads the sealed segment
		b.Fatal(err)
	}
	if got := (*l.segs.Load())[0].hdr.Version; got != v {
		b.Fatalf("the log's first segment is of version %d, want %d", got, v)
	}
	return d, l
}

// BenchmarkSequentialRead: point reads of every record in order (a raft
// leader replicating: Read(i), Read(i+1), …) of a sealed log of 1 KiB
// records written in batches of 1024 and of 64, from the device (each pass
// starts with fresh cache namespaces and no read-ahead), with a cache that
// holds the log (it has room: read-ahead fills it) and one a sixteenth of
// it. Device bytes and read-ahead hits per read are reported.
//
//	go test ./engine -run NONE -bench BenchmarkSequentialRead -cpuprofile /tmp/seq.prof
func BenchmarkSequentialRead(b *testing.B) {
	const records, size = 64 << 10, 1 << 10
	for _, batch := range []int{1024, 64} {
		d, l := pointBenchLog(b, 3, records/batch, batch, size)
		for _, cacheBytes := range []int64{256 << 20, 4 << 20} {
			b.Run(fmt.Sprintf("batch=%d/cache=%dMiB", batch, cacheBytes>>20), func(b *testing.B) {
				c, err := cache.New(cacheBytes)
				if err != nil {
					b.Fatal(err)
				}
				l.closeReadAhead()
				l.ra.closed = false
				old := l.cache
				l.cache = c
				defer func() { l.closeReadAhead(); l.ra.closed = false; l.cache = old; c.Close() }()
				var buf []byte
				before, hits := d.bytes.Load(), l.ra.hits.Load()
				off := uint64(records)
				b.SetBytes(size)
				for b.Loop() {
					if off == records {
						l.closeReadAhead()
						l.ra.closed = false
						for _, s := range *l.segs.Load() {
							s.ns = l.cache.NewNamespace()
						}
						off = 0
					}
					if buf, err = l.Read(off, buf[:0]); err != nil {
						b.Fatal(err)
					}
					off++
				}
				b.ReportMetric(float64(d.bytes.Load()-before)/float64(b.N), "device-B/read")
				b.ReportMetric(float64(l.ra.hits.Load()-hits)/float64(b.N), "ahead-hits/read")
			})
		}
		if err := l.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
