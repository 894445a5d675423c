package wal

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

const killChildEnv = "SEGSTORE_KILL_CHILD"

// TestKillChild is the child half of TestKillLoop: it only runs when the
// parent starts this test binary with SEGSTORE_KILL_CHILD=<file>,<cycle>. It
// appends from several goroutines in SyncAlways mode and prints one line per
// acknowledged batch until it is killed.
func TestKillChild(t *testing.T) {
	arg := os.Getenv(killChildEnv)
	if arg == "" {
		t.Skip("child process of TestKillLoop")
	}
	var path string
	var cycle int
	_, err := fmt.Sscanf(arg, "%d,%s", &cycle, &path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bad", killChildEnv, arg, err)
		os.Exit(2)
	}
	dev, err := blockdev.Open(path, blockdev.Options{Create: true})
	exitOn(err)
	var w *Writer
	if size, _ := dev.Size(); size == 0 {
		w, err = Create(dev, 0, Options{Preallocate: 1 << 20, PreZero: true, MaxWrite: 64 << 10})
		if err == nil {
			err = blockdev.SyncDir(filepath.Dir(path)) // the new file's name: its commit point
		}
	} else {
		w, _, err = Open(dev, Options{})
	}
	exitOn(err)
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for a := 0; a < 4; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				n := 1 + (a+i)%3
				recs := make([][]byte, n)
				for j := range recs {
					recs[j] = crashRecord(cycle*16+a, i, j)
				}
				first, err := w.Append(recs...)
				exitOn(err)
				mu.Lock()
				fmt.Fprintf(out, "%d %d %d %d\n", first, n, cycle*16+a, i)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(3)
	}
}

type ack struct {
	first     uint64
	n, a, seq int
}

// TestKillLoop starts a child that appends durably and reports acks through
// a pipe, kills it with SIGKILL at a random moment, and checks that every
// acknowledged record is in the file with its exact bytes and offset. The
// next child recovers the same file and goes on.
func TestKillLoop(t *testing.T) {
	if os.Getenv(killChildEnv) != "" {
		t.Skip("in the child")
	}
	cycles := 50
	if longRun() {
		cycles = 1000
	}
	path := filepath.Join(t.TempDir(), "kill.wal")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	want := map[uint64][]byte{}
	var totalAcks, tornCuts int
	for cycle := 0; cycle < cycles; cycle++ {
		acks := runChild(t, rng, cycle, path, func() {})
		totalAcks += len(acks)
		addAcks(want, acks)
		if checkAcked(t, path, want, cycle) {
			tornCuts++
		}
	}
	t.Logf("kill cycles=%d acknowledged batches=%d records=%d torn tails seen=%d", cycles, totalAcks, len(want), tornCuts)
}

// runChild starts TestKillChild appending to path, waits for its first
// acknowledgement and a random 1-30 ms more, calls interrupt (which may cut
// the power), kills the child with SIGKILL, and returns every
// acknowledgement it printed.
func runChild(t *testing.T, rng *rand.Rand, cycle int, path string, interrupt func()) []ack {
	cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%s", killChildEnv, cycle, path))
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer // read only after Wait
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	defer func() { // also when interrupt fails the test: never leave the child running
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	}()
	acks := make(chan ack, 1<<16)
	go func() {
		defer close(acks)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var k ack
			// A line is one write of less than PIPE_BUF bytes: it arrives whole.
			if _, err := fmt.Sscanf(sc.Text(), "%d %d %d %d", &k.first, &k.n, &k.a, &k.seq); err == nil {
				acks <- k
			}
		}
	}()
	first, ok := <-acks
	if !ok {
		_ = cmd.Wait()
		t.Fatalf("cycle %d: child made no progress: %s", cycle, stderr.String())
	}
	time.Sleep(time.Duration(1+rng.IntN(30)) * time.Millisecond)
	interrupt()
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = cmd.Wait()
	all := []ack{first}
	for k := range acks {
		all = append(all, k)
	}
	return all
}

func addAcks(want map[uint64][]byte, acks []ack) {
	for _, k := range acks {
		for j := 0; j < k.n; j++ {
			want[k.first+uint64(j)] = crashRecord(k.a, k.seq, j)
		}
	}
}

// checkAcked opens path read-only and requires every acknowledged record
// with its exact bytes; it reports whether recovery found a torn tail.
func checkAcked(t *testing.T, path string, want map[uint64][]byte, cycle int) (torn bool) {
	dev, err := blockdev.Open(path, blockdev.Options{ReadOnly: true})
	require.NoError(t, err, "cycle %d: the log file must exist once anything in it was acknowledged", cycle)
	got, rec, err := tryReadAll(dev)
	dev.Close()
	require.NoError(t, err, "cycle %d: recovery", cycle)
	for off, r := range want {
		require.Equal(t, r, got[off], "cycle %d: acknowledged record %d lost or changed", cycle, off)
	}
	return rec.Torn != nil
}
