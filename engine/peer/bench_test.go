package peer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segstore/segstore/engine"
)

// The replication benchmark serves a 2 GiB log from a child process (so
// the leader's CPU is its own rusage) and replicates it into a fresh
// follower, with segment bodies sent by this package's server (sendfile)
// or by a plain copy-loop handler, in the same run:
//
//	SEGSTORE_BENCH_DIR=/var/tmp/segbench go test ./engine/peer -run NONE -bench BenchmarkReplicate -benchtime 1x -count 3
//
// It builds $SEGSTORE_BENCH_DIR/peer-2g the first time.
func BenchmarkReplicate(b *testing.B) {
	dir := os.Getenv("SEGSTORE_BENCH_DIR")
	if dir == "" {
		b.Skip("set SEGSTORE_BENCH_DIR to run the replication benchmark")
	}
	logDir := filepath.Join(dir, "peer-2g")
	size := buildBenchLog(b, logDir, 2<<30)
	for _, body := range []string{"sendfile", "copyloop"} {
		b.Run("body="+body, func(b *testing.B) {
			var cpu time.Duration
			for range b.N {
				cpu += replicateOnce(b, logDir, body)
			}
			b.SetBytes(size)
			b.ReportMetric(cpu.Seconds()/float64(b.N)/(float64(size)/(1<<30)), "leader-cpu-s/GiB")
		})
	}
}

func buildBenchLog(b *testing.B, dir string, size int64) int64 {
	if _, err := os.Stat(filepath.Join(dir, "COMPLETE")); err != nil {
		os.RemoveAll(dir)
		opts := engine.DefaultOptions()
		opts.SyncMode, opts.Logger = engine.SyncNever, quiet
		l, err := engine.Open(dir, opts)
		if err != nil {
			b.Fatal(err)
		}
		batch := make([][]byte, 64)
		for i := range batch {
			batch[i] = make([]byte, 1024)
		}
		for written := int64(0); written < size; written += 64 << 10 {
			if _, err := l.Append(batch...); err != nil {
				b.Fatal(err)
			}
		}
		if err := errors.Join(l.Roll(), l.Close(), os.WriteFile(filepath.Join(dir, "COMPLETE"), nil, 0o644)); err != nil {
			b.Fatal(err)
		}
	}
	var total int64
	names, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	for _, n := range names[:len(names)-1] { // the sealed ones
		fi, _ := os.Stat(n)
		total += fi.Size()
	}
	return total
}

// replicateOnce starts a leader child serving logDir, replicates it into
// a new follower and returns the child's CPU time.
func replicateOnce(b *testing.B, logDir, body string) time.Duration {
	b.StopTimer()
	cmd := exec.Command(os.Args[0], "-test.run", "^TestBenchLeaderChild$")
	cmd.Env = append(os.Environ(), "SEGSTORE_LEADER_DIR="+logDir, "SEGSTORE_LEADER_BODY="+body)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	var addr string
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
			addr = a
			break
		}
	}
	follower, err := engine.Open(b.TempDir(), engine.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer follower.Close()
	leader, err := engine.Open(logDir, engine.Options{ReadOnly: true, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	end := leader.EndOffset()
	leader.Close()
	b.StartTimer()
	ctx, cancel := context.WithCancel(context.Background())
	err = Follow(ctx, "http://"+addr, follower, FollowOptions{Name: "main", Logger: quiet,
		Progress: func(s FollowStats) {
			if s.Applied >= end {
				cancel()
			}
		}})
	b.StopTimer()
	if follower.EndOffset() != end {
		b.Fatalf("follower at %d of %d: %v", follower.EndOffset(), end, err)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		b.Fatal(err)
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// TestBenchLeaderChild is the benchmark's leader process; it does nothing
// unless run by BenchmarkReplicate.
func TestBenchLeaderChild(t *testing.T) {
	dir := os.Getenv("SEGSTORE_LEADER_DIR")
	if dir == "" {
		t.Skip("the leader of BenchmarkReplicate")
	}
	l, err := engine.Open(dir, engine.Options{ReadOnly: true, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv := NewServer(map[string]*engine.Log{"main": l}, ServerOptions{})
	var h http.Handler = srv
	if os.Getenv("SEGSTORE_LEADER_BODY") == "copyloop" {
		mux := http.NewServeMux()
		mux.Handle("/", srv)
		mux.HandleFunc("GET /v1/logs/main/segments/{base}", func(w http.ResponseWriter, r *http.Request) {
			base, _ := strconv.ParseUint(r.PathValue("base"), 10, 64)
			f, err := os.Open(filepath.Join(dir, fmt.Sprintf("%020d.seg", base)))
			if err != nil {
				http.Error(w, err.Error(), http.StatusNotFound)
				return
			}
			defer f.Close()
			fi, _ := f.Stat()
			w.Header().Set("Content-Length", strconv.FormatInt(fi.Size(), 10))
			buf := make([]byte, 256<<10)
			io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{f}, buf) // read+write through buf
		})
		h = mux
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h}
	go hs.Serve(ln)
	fmt.Printf("listening %s\n", ln.Addr())
	io.Copy(io.Discard, os.Stdin) // until the benchmark closes it
	hs.Close()
}

// BenchmarkTailLatency: from a durable append on the leader to the
// arrival of its bytes at a client long-polling the tail, over loopback;
// p50 and p99 over b.N appends. serve=writer: the server's log is the
// writer; serve=beside: the server has the log open read-only beside its
// writer (as another process would), kept refreshed by inotify.
//
//	go test ./engine/peer -run NONE -bench BenchmarkTailLatency -benchtime 2000x
func BenchmarkTailLatency(b *testing.B) {
	b.Run("serve=writer", func(b *testing.B) { tailLatency(b, false) })
	b.Run("serve=beside", func(b *testing.B) { tailLatency(b, true) })
}

func tailLatency(b *testing.B, beside bool) {
	dir := b.TempDir()
	l, err := engine.Open(dir, engine.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Append([]byte("first")); err != nil {
		b.Fatal(err)
	}
	served := l
	if beside {
		if served, err = engine.Open(dir, engine.Options{Logger: quiet, ReadOnly: true}); err != nil {
			b.Fatal(err)
		}
		defer served.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go served.KeepRefreshed(ctx, time.Second)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := NewServer(map[string]*engine.Log{"main": served}, ServerOptions{}).HTTPServer("")
	go hs.Serve(ln)
	defer hs.Close()
	base := l.Segments()[0].Base
	lat := make([]time.Duration, 0, b.N)
	client := &http.Client{}
	b.ResetTimer()
	for range b.N {
		v, err := l.OpenSegment(base)
		if err != nil {
			b.Fatal(err)
		}
		pos := v.Size()
		v.Close()
		arrived := make(chan time.Time, 1)
		go func() {
			resp, err := client.Get(fmt.Sprintf("http://%s/v1/logs/main/tail?base=%d&pos=%d&wait=10s", ln.Addr(), base, pos))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			arrived <- time.Now()
		}()
		time.Sleep(time.Millisecond) // the request is waiting
		if _, err := l.Append([]byte("a record to tail")); err != nil {
			b.Fatal(err)
		}
		acked := time.Now()
		lat = append(lat, max(0, (<-arrived).Sub(acked)))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkFollowerDurableLag: from a durable append on the leader to the
// moment a follower running Follow has the append's bytes durable in its
// stage (how much a follower can lose if the leader is lost for good);
// p50 and p99 over b.N appends, over loopback.
//
//	go test ./engine/peer -run NONE -bench BenchmarkFollowerDurableLag -benchtime 2000x
func BenchmarkFollowerDurableLag(b *testing.B) {
	leader, err := engine.Open(b.TempDir(), engine.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer leader.Close()
	follower, err := engine.Open(b.TempDir(), engine.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer follower.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := NewServer(map[string]*engine.Log{"main": leader}, ServerOptions{}).HTTPServer("")
	go hs.Serve(ln)
	defer hs.Close()

	var staged atomic.Int64
	progress := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, "http://"+ln.Addr().String(), follower, FollowOptions{Name: "main", Logger: quiet,
			Progress: func(s FollowStats) {
				staged.Store(s.Staged)
				select {
				case progress <- struct{}{}:
				default:
				}
			}})
	}()
	defer func() { cancel(); <-done }()
	stagedBy := func(want int64) {
		for staged.Load() < want {
			<-progress
		}
	}
	activeSize := func() int64 { segs := leader.Segments(); return segs[len(segs)-1].ExportSize() }
	stagedBy(activeSize()) // the header
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		if _, err := leader.Append([]byte("a record to replicate")); err != nil {
			b.Fatal(err)
		}
		acked := time.Now()
		stagedBy(activeSize())
		lat = append(lat, time.Since(acked))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
