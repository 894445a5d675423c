//go:build unix

package testutil

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Child is a test of the running test binary that another test starts as
// a child process, to kill it at a moment of its choosing. The child test
// runs only when Env is set (ChildArg says whether it is); it reports what
// it has done as lines on its standard output, one write a line, each
// shorter than PIPE_BUF so that it arrives whole or not at all.
type Child struct {
	Test string // the child test's name, run as -test.run=^Test$
	Env  string // the environment variable that makes the test a child
	Arg  string // Env's value: what the child is to do
}

// ChildArg returns the value of env and whether it is set: whether this
// process is a child started by Child.Kill, and with what argument.
func ChildArg(env string) (string, bool) {
	arg := os.Getenv(env)
	return arg, arg != ""
}

// Kill starts c's test in a child process, waits for its first line, then
// for after, calls interrupt (which may, say, cut a filesystem's power),
// kills the child with SIGKILL and returns every line it printed, the
// first one included, in order. It fails the test when the child ends
// without printing anything, with the child's standard error. The child
// is killed also when interrupt fails the test.
func (c Child) Kill(t testing.TB, after time.Duration, interrupt func()) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+c.Test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), c.Env+"="+c.Arg)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	var stderr bytes.Buffer // read only after Wait
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	lines := newLineReader(stdout)
	defer func() { // never leave the child running
		_ = cmd.Process.Signal(syscall.SIGKILL)
		lines.wait() // every line read before Wait closes the pipe
		_ = cmd.Wait()
	}()
	if !lines.first() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		lines.wait()
		_ = cmd.Wait()
		t.Fatalf("child %s (%s=%s) made no progress: %s", c.Test, c.Env, c.Arg, stderr.String())
	}
	time.Sleep(after)
	interrupt()
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	return lines.wait()
}

// lineReader collects the lines of a child's output until it ends.
type lineReader struct {
	firstc chan bool     // receives true at the first line, false at an end before it
	done   chan struct{} // closed when the output has ended
	lines  []string      // written by the reading goroutine until done
}

func newLineReader(r io.Reader) *lineReader {
	l := &lineReader{firstc: make(chan bool, 1), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			l.lines = append(l.lines, sc.Text())
			if len(l.lines) == 1 {
				l.firstc <- true
			}
		}
		if len(l.lines) == 0 {
			l.firstc <- false
		}
	}()
	return l
}

// first waits for the first line and reports whether there was one.
func (l *lineReader) first() bool { return <-l.firstc }

// wait waits for the output's end and returns every line.
func (l *lineReader) wait() []string {
	<-l.done
	return l.lines
}

// Ack is one acknowledged batch as a child reports it: the offset of its
// first record, how many records it had, the identity of the appender
// that wrote it and the batch's sequence number in that appender. The
// records themselves are regenerated from ID, Seq and their place in the
// batch.
type Ack struct {
	First   uint64
	N       int
	ID, Seq int
}

// ParseAcks returns the acknowledgements among lines (in the form
// Appenders prints them), skipping any other line.
func ParseAcks(lines []string) []Ack {
	var acks []Ack
	for _, line := range lines {
		var k Ack
		if _, err := fmt.Sscanf(line, "%d %d %d %d", &k.First, &k.N, &k.ID, &k.Seq); err == nil {
			acks = append(acks, k)
		}
	}
	return acks
}

// AddTo stores each record of every ack in want by its offset, as record
// regenerates it from the ack's ID and Seq and its place j in the batch.
func AddTo(want map[uint64][]byte, acks []Ack, record func(id, seq, j int) []byte) {
	for _, k := range acks {
		for j := 0; j < k.N; j++ {
			want[k.First+uint64(j)] = record(k.ID, k.Seq, j)
		}
	}
}

// CycleArg is a child's argument that names the cycle of the test it is
// started in and the path it works on, as ParseCycleArg reads it back.
func CycleArg(cycle int, path string) string { return fmt.Sprintf("%d,%s", cycle, path) }

// ParseCycleArg reads what CycleArg wrote. In a child, where there is no
// test to fail, an argument of another form ends the process with exit
// status 2.
func ParseCycleArg(arg string) (cycle int, path string) {
	if _, err := fmt.Sscanf(arg, "%d,%s", &cycle, &path); err != nil {
		fmt.Fprintf(os.Stderr, "bad child argument %q: %v\n", arg, err)
		os.Exit(2)
	}
	return cycle, path
}

// Appenders is a child's body: goroutines that append batches of stamped
// records and print an Ack for each acknowledged one.
type Appenders struct {
	N        int                                  // how many goroutines
	MaxBatch int                                  // batch seq of goroutine a holds 1 + (a+seq)%MaxBatch records
	ID       func(a int) int                      // the identity goroutine a stamps its records with
	Record   func(id, seq, j int) []byte          // record j of batch seq of the appender named id
	Append   func(recs ...[]byte) (uint64, error) // appends one batch, returns its first offset
}

// Run starts the goroutines, each appending its batches 0, 1, 2, … and
// printing the Ack of each on standard output, flushed at once, until the
// process is killed. The first error Append returns ends the process with
// exit status 3, the error on standard error.
func (p Appenders) Run() {
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for a := 0; a < p.N; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := p.ID(a)
			for seq := 0; ; seq++ {
				n := 1 + (a+seq)%p.MaxBatch
				recs := make([][]byte, n)
				for j := range recs {
					recs[j] = p.Record(id, seq, j)
				}
				first, err := p.Append(recs...)
				ExitOn(err, "child append")
				mu.Lock()
				fmt.Fprintf(out, "%d %d %d %d\n", first, n, id, seq)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// ExitOn ends a child process with exit status 3 when err is not nil,
// printing what and err on standard error (which the parent shows when
// the child made no progress).
func ExitOn(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", what, err)
		os.Exit(3)
	}
}
