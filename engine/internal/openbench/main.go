//go:build linux

// Command openbench measures Log.Open after a clean close on logs of
// several sizes, cold: before every open it syncs and drops the kernel's
// page, dentry and inode caches (it must run as root on Linux). It builds
// each log with the default options under -dir, opens it -n times and
// prints every open's time, its Recovery summary and the median; the logs
// are removed at the end unless -keep.
//
//	go run ./engine/internal/openbench -dir /some/ext4/dir -sizes 1,10 -n 5
//
// With -open it opens an existing log once and exits, for strace or perf.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/segstore/segstore/engine"
)

func main() {
	dir := flag.String("dir", "", "where to build the logs (a real, durable filesystem with room for them)")
	sizes := flag.String("sizes", "1,10", "comma-separated log sizes in GiB")
	n := flag.Int("n", 5, "cold opens per size")
	keep := flag.Bool("keep", false, "keep the logs")
	openOnly := flag.String("open", "", "open this existing log once (read-write), print its Recovery, close it, and exit")
	readOnly := flag.Bool("ro", false, "open read-only")
	flag.Parse()
	if *openOnly != "" {
		d, rec, err := open(*openOnly, *readOnly)
		if err != nil {
			fail(err)
		}
		fmt.Printf("open %v %s\n", d, summary(rec))
		return
	}
	if *dir == "" {
		fail(fmt.Errorf("-dir is required"))
	}
	for _, f := range strings.Split(*sizes, ",") {
		gib, err := strconv.Atoi(f)
		if err != nil {
			fail(fmt.Errorf("-sizes: %w", err))
		}
		path := filepath.Join(*dir, fmt.Sprintf("log-%dg", gib))
		if err := build(path, int64(gib)<<30); err != nil {
			fail(err)
		}
		var times []time.Duration
		for range *n {
			if err := dropCaches(); err != nil {
				fail(err)
			}
			d, rec, err := open(path, *readOnly)
			if err != nil {
				fail(err)
			}
			times = append(times, d)
			fmt.Printf("%d GiB: open %v %s\n", gib, d, summary(rec))
		}
		slices.Sort(times)
		fmt.Printf("%d GiB: median of %d cold opens %v (min %v, max %v)\n", gib, len(times), times[len(times)/2], times[0], times[len(times)-1])
		if !*keep {
			if err := os.RemoveAll(path); err != nil {
				fail(err)
			}
		}
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "openbench:", err)
	os.Exit(1)
}

// build appends records of 16 KiB, 64 to a batch, until the log holds
// size bytes, and closes it cleanly; an existing log of that size is kept.
func build(path string, size int64) error {
	if err := os.MkdirAll(path, 0o755); err != nil {
		return err
	}
	l, err := engine.Open(path, engine.DefaultOptions())
	if err != nil {
		return err
	}
	rec := make([]byte, 16<<10)
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = rec
	}
	t := time.Now()
	for int64(l.EndOffset())*int64(len(rec)) < size {
		if _, err := l.Append(batch...); err != nil {
			l.Close()
			return err
		}
	}
	fmt.Printf("built %s: %d segments in %v\n", path, len(l.Segments()), time.Since(t).Round(time.Millisecond))
	return l.Close()
}

func open(path string, readOnly bool) (time.Duration, engine.Recovery, error) {
	o := engine.DefaultOptions()
	o.ReadOnly = readOnly
	t := time.Now()
	l, err := engine.Open(path, o)
	d := time.Since(t)
	if err != nil {
		return d, engine.Recovery{}, err
	}
	rec := l.Stats().LastOpenRecovery
	return d, rec, l.Close()
}

func summary(r engine.Recovery) string {
	return fmt.Sprintf("(segments %d, deferred %d, sealed %d, clean index %v, active frames %d, active scan %v)",
		r.Segments, r.Deferred, r.Sealed, r.CleanIndex, r.ActiveFrames, r.ActiveScan)
}

func dropCaches() error {
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}
