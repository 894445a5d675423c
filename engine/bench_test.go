package engine_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
	"github.com/segstore/segstore/wal/waltest"
)

// BenchmarkEngineAppend is the durable append matrix through engine.Append
// (64 MiB segments, or SEGSTORE_BENCH_SEGMENT_MIB, rolling as they fill:
// the cost of rolling is in the figures), beside the plain page-cache log.
//
//	go test ./engine -run NONE -bench BenchmarkEngineAppend -count 5
func BenchmarkEngineAppend(b *testing.B) {
	for _, size := range []int{128, 1 << 10, 64 << 10} {
		for _, batch := range []int{1, 64} {
			if size == 64<<10 && batch == 64 {
				batch = 16 // 4 MiB batches would exceed MaxWrite
			}
			for _, appenders := range []int{1, 16} {
				for _, impl := range []string{"engine", "pagecache"} {
					b.Run(fmt.Sprintf("size=%d/batch=%d/appenders=%d/impl=%s", size, batch, appenders, impl), func(b *testing.B) {
						benchEngineAppend(b, impl, size, batch, appenders)
					})
				}
			}
		}
	}
}

type appender interface {
	waltest.Appender
	Close() error
}

func benchEngineAppend(b *testing.B, impl string, size, batch, appenders int) {
	recs := make([][]byte, batch)
	for i := range recs {
		recs[i] = bytes.Repeat([]byte{byte(i + 1)}, size)
	}
	var a appender
	var log *engine.Log
	if impl == "engine" {
		opts := engine.DefaultOptions()
		opts.MaxWrite = 8 << 20
		if s := os.Getenv("SEGSTORE_BENCH_SEGMENT_MIB"); s != "" {
			var mib int64
			fmt.Sscan(s, &mib)
			opts.SegmentSize = mib << 20
		}
		l, err := engine.Open(filepath.Join(b.TempDir(), "log"), opts)
		if err != nil {
			b.Fatal(err)
		}
		a, log = l, l
	} else {
		pl, err := waltest.NewPageCacheLog(filepath.Join(b.TempDir(), "pagecache.wal"))
		if err != nil {
			b.Fatal(err)
		}
		a = pl
	}
	waltest.BenchAppends(b, a, recs, appenders)
	if log != nil {
		st := log.Stats()
		b.ReportMetric(st.MeanBatch, "appends/flush")
		b.ReportMetric(float64(st.Segments), "segments")
	}
	if err := a.Close(); err != nil {
		b.Fatal(err)
	}
}

// The benchmarks below need large logs: they run only with
// SEGSTORE_BENCH_DIR set to a directory on the disk under test (it keeps
// the logs between runs: about 13 GiB). Cold runs drop the page cache
// (root only).
//
//	SEGSTORE_BENCH_DIR=/var/tmp/segbench go test ./engine -run NONE -bench 'Scan|PointRead|Open' -benchtime 3x
func benchDir(b testing.TB) string {
	d := os.Getenv("SEGSTORE_BENCH_DIR")
	if d == "" {
		b.Skip("set SEGSTORE_BENCH_DIR to run the large-log benchmarks")
	}
	return d
}

const benchRecord = 1 << 10

// bigLog returns a log directory holding about size bytes of 1 KiB records,
// building it (bulk load: SyncNever, then one Sync) the first time.
func bigLog(b testing.TB, name string, size int64) string {
	dir := filepath.Join(benchDir(b), name)
	done := filepath.Join(dir, "COMPLETE")
	if _, err := os.Stat(done); err == nil {
		return dir
	}
	os.RemoveAll(dir)
	opts := engine.DefaultOptions()
	opts.SyncMode = engine.SyncNever
	l, err := engine.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	n := size / benchRecord
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs := make([][]byte, 64)
			for i := range recs {
				recs[i] = bytes.Repeat([]byte{byte(w*64 + i)}, benchRecord)
			}
			for i := int64(0); i < n/2/64; i++ {
				if _, err := l.Append(recs...); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(done, nil, 0o644); err != nil {
		b.Fatal(err)
	}
	return dir
}

func dropPageCache(b testing.TB) {
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		b.Skipf("cold runs need root to drop the page cache: %v", err)
	}
}

func openRO(b testing.TB, dir string, c *cache.Cache) *engine.Log {
	opts := engine.DefaultOptions()
	opts.ReadOnly, opts.Cache = true, c
	l, err := engine.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkScanCold reads a 2 GiB log from the start with a cold page
// cache, three ways in the same run (so -count interleaves them):
// reader=iterator is an engine Iterator (every frame verified);
// reader=pread is a plain loop of 1 MiB O_DIRECT preads over the same
// segment files, checking nothing (what Go gets from the device);
// reader=fio is fio doing the same (skipped when fio is not installed):
//
//	fio --name=scan --filename=F1:F2:… --readonly --direct=1 --rw=read --bs=1m --ioengine=psync --file_service_type=sequential
//
// All three report MB/s of segment file bytes.
func BenchmarkScanCold(b *testing.B) {
	dir := bigLog(b, "log-2g", 2<<30)
	files, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	sort.Strings(files)
	var fileBytes int64
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			b.Fatal(err)
		}
		fileBytes += fi.Size()
	}
	cold := func(b *testing.B, scan func(b *testing.B)) {
		b.SetBytes(fileBytes)
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			dropPageCache(b)
			b.StartTimer()
			scan(b)
		}
	}
	b.Run("reader=iterator", func(b *testing.B) {
		l := openRO(b, dir, nil)
		defer l.Close()
		cold(b, func(b *testing.B) {
			it := l.NewIterator(l.StartOffset())
			n := 0
			for it.Next() {
				n += len(it.Record())
			}
			if it.Err() != nil || n == 0 {
				b.Fatal(it.Err(), n)
			}
			it.Close()
		})
	})
	b.Run("reader=pread", func(b *testing.B) {
		buf, err := alignedbuf.Alloc(1<<20, 4096)
		if err != nil {
			b.Fatal(err)
		}
		cold(b, func(b *testing.B) {
			for _, name := range files {
				f, err := openDirect(name)
				if err != nil {
					b.Fatal(err)
				}
				for p := int64(0); ; p += int64(len(buf)) {
					n, err := f.ReadAt(buf, p)
					if n == 0 || err != nil {
						break
					}
				}
				f.Close()
			}
		})
	})
	b.Run("reader=fio", func(b *testing.B) {
		if _, err := exec.LookPath("fio"); err != nil {
			b.Skip("fio is not installed (apt-get install -y fio)")
		}
		cold(b, func(b *testing.B) {
			out, err := exec.Command("fio", "--name=scan", "--filename="+strings.Join(files, ":"), "--readonly",
				"--direct=1", "--rw=read", "--bs=1m", "--ioengine=psync", "--file_service_type=sequential",
				"--output-format=terse").CombinedOutput()
			if err != nil {
				b.Fatalf("fio: %v: %s", err, out)
			}
		})
	})
}

// preadIndex is the page-cache baseline's in-memory index: where every
// record's bytes are, found by scanning the segment files once.
type preadIndex struct {
	files []*os.File
	locs  []recLoc // by offset
}

type recLoc struct {
	file int32
	n    int32
	pos  int64
}

func buildPreadIndex(b testing.TB, dir string) *preadIndex {
	names, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	sort.Strings(names)
	idx := &preadIndex{}
	for fi, name := range names {
		f, err := os.Open(name)
		if err != nil {
			b.Fatal(err)
		}
		idx.files = append(idx.files, f)
		data, err := os.ReadFile(name)
		if err != nil {
			b.Fatal(err)
		}
		hdr, err := wal.DecodeFileHeader(data)
		if err != nil {
			b.Fatal(err)
		}
		_, _, err = wal.DecodeFrames(data[wal.DataStart:], hdr, wal.DataStart, hdr.BaseOffset, func(f wal.Frame) bool {
			p := 0
			wal.Records(hdr.Version, f.Payload, func(i int, r []byte) bool {
				p += hdr.RecordHeaderLen()
				idx.locs = append(idx.locs, recLoc{file: int32(fi), n: int32(len(r)), pos: f.Pos + wal.FrameHeaderLen + int64(p)})
				p += len(r)
				return true
			})
			return true
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return idx
}

func (x *preadIndex) read(off uint64, dst []byte) ([]byte, error) {
	loc := x.locs[off]
	dst = dst[:loc.n]
	_, err := x.files[loc.file].ReadAt(dst, loc.pos)
	return dst, err
}

// BenchmarkPointRead: random 1 KiB reads over a 1 GiB log, uniform and
// Zipf(1.1), warm (the working set cached: ours in a 2 GiB cache, the
// baseline's in the page cache) and cold (ours with a minimal cache, the
// baseline after dropping the page cache), 1 and 16 readers, against pread
// through the page cache with an in-memory index of every record.
func BenchmarkPointRead(b *testing.B) {
	dir := bigLog(b, "log-1g", 1<<30)
	idx := buildPreadIndex(b, dir)
	n := uint64(len(idx.locs))
	for _, dist := range []string{"uniform", "zipf"} {
		for _, state := range []string{"warm", "cold"} {
			for _, readers := range []int{1, 16} {
				for _, impl := range []string{"engine", "pagecache"} {
					b.Run(fmt.Sprintf("dist=%s/state=%s/readers=%d/impl=%s", dist, state, readers, impl), func(b *testing.B) {
						benchPointRead(b, dir, idx, n, dist, state, readers, impl)
					})
				}
			}
		}
	}
}

func benchPointRead(b *testing.B, dir string, idx *preadIndex, n uint64, dist, state string, readers int, impl string) {
	var read func(off uint64, dst []byte) ([]byte, error)
	if impl == "engine" {
		budget := int64(64 << 10)
		if state == "warm" {
			budget = 2 << 30
		}
		c, err := cache.New(budget)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		l := openRO(b, dir, c)
		defer l.Close()
		read = l.Read
		if state == "warm" { // every record read once: each record run and index block is cached
			for off := range n {
				if _, err := l.Read(off, nil); err != nil {
					b.Fatal(err)
				}
			}
			c.Wait()
		}
	} else {
		read = idx.read
		if state == "warm" {
			for off := range n {
				idx.read(off, make([]byte, benchRecord))
			}
		}
	}
	if state == "cold" {
		dropPageCache(b)
	}
	var seed sync.Mutex
	seq := uint64(1)
	next := func() func() uint64 {
		seed.Lock()
		seq++
		r := rand.New(rand.NewPCG(seq, 99))
		seed.Unlock()
		if dist == "uniform" {
			return func() uint64 { return r.Uint64N(n) }
		}
		z := rand.NewZipf(r, 1.1, 1, n-1)
		return func() uint64 { return z.Uint64() * 2654435761 % n } // scatter the hot ranks
	}
	b.SetBytes(benchRecord)
	b.ResetTimer()
	work := func(pick func() uint64, count func() bool) {
		buf := make([]byte, 0, benchRecord)
		for count() {
			var err error
			if buf, err = read(pick(), buf[:0]); err != nil {
				b.Error(err)
				return
			}
		}
	}
	if readers == 1 {
		i := 0
		work(next(), func() bool { i++; return i <= b.N })
	} else {
		b.SetParallelism(max(1, readers/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) { work(next(), pb.Next) })
	}
}

// BenchmarkOpen opens a 1 GiB and a 10 GiB log with a cold page cache:
// read-only (sealed footers only) and read-write (which also scans the
// active segment).
func BenchmarkOpen(b *testing.B) {
	for _, size := range []int64{1 << 30, 10 << 30} {
		dir := bigLog(b, fmt.Sprintf("log-%dg", size>>30), size)
		for _, mode := range []string{"ro", "rw"} {
			b.Run(fmt.Sprintf("size=%dGiB/mode=%s", size>>30, mode), func(b *testing.B) {
				var segs int
				var rest time.Duration // Open's time besides the last segment's
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					dropPageCache(b)
					b.StartTimer()
					opts := engine.DefaultOptions()
					opts.ReadOnly = mode == "ro"
					l, err := engine.Open(dir, opts)
					if err != nil {
						b.Fatal(err)
					}
					segs = len(l.Segments())
					b.StopTimer()
					rec := l.Stats().LastOpenRecovery
					rest += rec.Duration - rec.ActiveScan
					l.Close()
					b.StartTimer()
				}
				b.ReportMetric(float64(segs), "segments")
				b.ReportMetric(float64(rest.Microseconds())/1000/float64(b.N), "ms-besides-last")
			})
		}
	}
}

// TestPeakRSS reads a 10 GiB log through a 256 MiB cache (random point
// reads, then a full scan) and reports the process's peak RSS (VmHWM).
// Runs only with SEGSTORE_BENCH_DIR set.
func TestPeakRSS(t *testing.T) {
	dir := bigLog(t, "log-10g", 10<<30)
	c, err := cache.New(256 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	l := openRO(t, dir, c)
	defer l.Close()
	end := l.DurableOffset()
	r := rand.New(rand.NewPCG(1, 2))
	start := time.Now()
	buf := make([]byte, 0, benchRecord)
	for i := 0; i < 300_000; i++ {
		if buf, err = l.Read(r.Uint64N(end), buf[:0]); err != nil {
			t.Fatal(err)
		}
	}
	it := l.NewIterator(0)
	var n int64
	for it.Next() {
		n++
	}
	if it.Err() != nil {
		t.Fatal(it.Err())
	}
	status, _ := os.ReadFile("/proc/self/status")
	var hwm string
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			hwm = strings.TrimSpace(strings.TrimPrefix(line, "VmHWM:"))
		}
	}
	t.Logf("10 GiB log, 256 MiB cache: 300k random reads + scan of %d records in %v; peak RSS %s; cache %+v", n, time.Since(start), hwm, c.Stats())
}

// BenchmarkReadWarm: random 1 KiB point reads over a 16 MiB log whose
// every record is cached (ours) or in the page cache (pread with an
// in-memory index), batches of 64 records as a bulk writer makes them.
// Small enough to run anywhere; the 1 GiB version is BenchmarkPointRead.
func BenchmarkReadWarm(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "log")
	opts := engine.DefaultOptions()
	opts.SegmentSize = 4 << 20
	l, err := engine.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	recs := make([][]byte, 64)
	for i := range recs {
		recs[i] = bytes.Repeat([]byte{byte(i)}, benchRecord)
	}
	for i := 0; i < 256; i++ {
		if _, err := l.Append(recs...); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	idx := buildPreadIndex(b, dir)
	n := uint64(len(idx.locs))
	c, err := cache.New(64 << 20)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	l = openRO(b, dir, c)
	defer l.Close()
	for pass := 0; pass < 2; pass++ { // the first pass fills the caches
		for off := uint64(0); off < n; off++ {
			if _, err := l.Read(off, nil); err != nil {
				b.Fatal(err)
			}
			idx.read(off, make([]byte, benchRecord))
		}
		c.Wait()
	}
	for _, impl := range []string{"engine", "pagecache"} {
		read := l.Read
		if impl == "pagecache" {
			read = idx.read
		}
		b.Run("impl="+impl, func(b *testing.B) {
			r := rand.New(rand.NewPCG(1, 2))
			buf := make([]byte, 0, benchRecord)
			b.SetBytes(benchRecord)
			for i := 0; i < b.N; i++ {
				if buf, err = read(r.Uint64N(n), buf[:0]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	if st := c.Stats(); st.Misses > int64(n) {
		b.Logf("cache stats %+v", st)
	}
}

// BenchmarkSegmentRecords walks every record of one warm sealed 16 MiB
// segment (1 KiB records in batches of 64) three ways: Read per offset
// (through the cache, a copy per record), an Iterator (O_DIRECT reads,
// records in its buffer) and a Mapping's iterator (in place, no copy; the
// mapping made once, its frames verified by the warm-up walk).
//
//	go test ./engine -run NONE -bench BenchmarkSegmentRecords -count 5
func BenchmarkSegmentRecords(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "log")
	opts := engine.DefaultOptions()
	opts.SegmentSize = 16 << 20
	l, err := engine.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	recs := make([][]byte, 64)
	for i := range recs {
		recs[i] = bytes.Repeat([]byte{byte(i)}, benchRecord)
	}
	for len(l.Segments()) < 2 {
		if _, err := l.Append(recs...); err != nil {
			b.Fatal(err)
		}
	}
	seg := l.Segments()[0]
	records := float64(seg.Next - seg.Base)
	v, err := l.OpenSegment(seg.Base)
	if err != nil {
		b.Fatal(err)
	}
	defer v.Close()
	m, err := v.Mmap()
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	walk := map[string]func(b *testing.B) int{
		"read": func(b *testing.B) int {
			buf := make([]byte, 0, benchRecord)
			n := 0
			for off := seg.Base; off < seg.Next; off++ {
				if buf, err = l.Read(off, buf[:0]); err != nil {
					b.Fatal(err)
				}
				n += len(buf)
			}
			return n
		},
		"iterator": func(b *testing.B) int {
			it := l.NewIterator(seg.Base)
			defer it.Close()
			n := 0
			for it.Next() && it.Offset() < seg.Next {
				n += len(it.Record())
			}
			return n
		},
		"mmap": func(b *testing.B) int {
			it := m.NewIterator()
			n := 0
			for it.Next() {
				n += len(it.Record())
			}
			if it.Err() != nil {
				b.Fatal(it.Err())
			}
			return n
		},
	}
	for _, via := range []string{"read", "iterator", "mmap"} {
		b.Run("via="+via, func(b *testing.B) {
			walk[via](b) // warm: cache, page cache
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if n := walk[via](b); n != int(records)*benchRecord {
					b.Fatalf("walked %d bytes, want %d", n, int(records)*benchRecord)
				}
			}
			b.ReportMetric(records*float64(b.N)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkRefresh: one Refresh of a read-only log beside its live writer
// (64 MiB segments, preallocated): after one 1 KiB append since the last
// look (the new frame is read), and with nothing new acknowledged (what
// an idle log costs a polling reader: no read at all).
//
//	go test ./engine -run NONE -bench BenchmarkRefresh
func BenchmarkRefresh(b *testing.B) {
	dir := b.TempDir()
	opts := engine.DefaultOptions()
	writer, err := engine.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer writer.Close()
	rec := make([]byte, 1024)
	for range 1000 {
		if _, err := writer.Append(rec); err != nil {
			b.Fatal(err)
		}
	}
	opts.ReadOnly = true
	reader, err := engine.Open(dir, opts)
	if err != nil {
		b.Fatal(err)
	}
	defer reader.Close()
	for _, appends := range []int{1, 0} {
		b.Run(map[int]string{1: "case=append", 0: "case=idle"}[appends], func(b *testing.B) {
			for b.Loop() {
				b.StopTimer()
				for range appends {
					if _, err := writer.Append(rec); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				changed, err := reader.Refresh()
				if err != nil || changed != (appends > 0) {
					b.Fatalf("Refresh: changed %v, %v", changed, err)
				}
			}
		})
	}
}
