package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/segstore/segstore/blockdev"
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
