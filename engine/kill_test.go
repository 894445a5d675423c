package engine

import (
	"bufio"
	"bytes"
	"encoding/binary"
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
)

const killChildEnv = "SEGSTORE_ENGINE_KILL_CHILD"

func killRecord(a, seq, j int) []byte {
	b := make([]byte, 16+(a*31+seq*7+j)%900)
	binary.LittleEndian.PutUint32(b, uint32(a))
	binary.LittleEndian.PutUint32(b[4:], uint32(seq))
	binary.LittleEndian.PutUint32(b[8:], uint32(j))
	for i := 12; i < len(b); i++ {
		b[i] = byte(a + seq + j + i)
	}
	return b
}

func killOptions() Options {
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.Logger = 256<<10, 64<<10, quiet // rolls every few hundred appends
	return o
}

// TestEngineKillChild is the child of TestEngineKillLoop: it appends from
// four goroutines and prints "first n appender seq" per acknowledged batch.
func TestEngineKillChild(t *testing.T) {
	arg := os.Getenv(killChildEnv)
	if arg == "" {
		t.Skip("child process of TestEngineKillLoop")
	}
	var cycle int
	var dir string
	if _, err := fmt.Sscanf(arg, "%d,%s", &cycle, &dir); err != nil {
		os.Exit(2)
	}
	l, err := Open(dir, killOptions())
	if err != nil {
		fmt.Fprintln(os.Stderr, "child open:", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for a := 0; a < 4; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; seq++ {
				n := 1 + (a+seq)%4
				recs := make([][]byte, n)
				for j := range recs {
					recs[j] = killRecord(cycle*8+a, seq, j)
				}
				first, err := l.Append(recs...)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child append:", err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Fprintf(out, "%d %d %d %d\n", first, n, cycle*8+a, seq)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestEngineKillLoop kills a child appending durably (segments rolling all
// the while) with SIGKILL at random moments, and checks after each kill that
// every acknowledged record is in the log with its exact bytes.
func TestEngineKillLoop(t *testing.T) {
	if os.Getenv(killChildEnv) != "" {
		t.Skip("in the child")
	}
	cycles := 50
	if os.Getenv("SEGSTORE_LONG") != "" {
		cycles = 1000
	}
	dir := filepath.Join(t.TempDir(), "log")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
	want := map[uint64][]byte{}
	var batches int
	for cycle := 0; cycle < cycles; cycle++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestEngineKillChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%s", killChildEnv, cycle, dir))
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		var stderr bytes.Buffer // read only after Wait
		cmd.Stderr = &stderr
		require.NoError(t, cmd.Start())
		lines := make(chan string, 1<<16)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
		}()
		first, ok := <-lines
		if !ok {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("cycle %d: child made no progress: %s", cycle, stderr.String())
		}
		time.Sleep(time.Duration(1+rng.IntN(40)) * time.Millisecond)
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()
		all := []string{first}
		for line := range lines {
			all = append(all, line)
		}
		for _, line := range all {
			var off uint64
			var n, a, seq int
			if _, err := fmt.Sscanf(line, "%d %d %d %d", &off, &n, &a, &seq); err != nil {
				continue
			}
			for j := 0; j < n; j++ {
				want[off+uint64(j)] = killRecord(a, seq, j)
			}
			batches++
		}

		ro := killOptions()
		ro.ReadOnly = true
		l, err := Open(dir, ro)
		require.NoError(t, err, "cycle %d: open after SIGKILL", cycle)
		it := l.NewIterator(0)
		got := 0
		for it.Next() {
			if w, ok := want[it.Offset()]; ok {
				require.Equal(t, w, it.Record(), "cycle %d: acknowledged record %d changed", cycle, it.Offset())
				got++
			}
		}
		require.NoError(t, it.Err(), "cycle %d", cycle)
		require.Equal(t, len(want), got, "cycle %d: acknowledged records lost", cycle)
		segs := len(l.Segments())
		require.NoError(t, l.Close())
		if cycle == cycles-1 {
			t.Logf("engine kill cycles=%d acknowledged batches=%d records=%d segments=%d, 0 lost", cycles, batches, len(want), segs)
		}
	}
}
