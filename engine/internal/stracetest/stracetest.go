// Package stracetest proves which system calls a test's work makes: it
// re-runs the calling test in a child process under strace and sums what
// one system call returned.
package stracetest

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
)

const childEnv = "SEGSTORE_STRACE_CHILD"

// InChild reports whether t runs as the traced child: it should then do
// the work and print what the parent checks against.
func InChild(t *testing.T) bool { return os.Getenv(childEnv) == t.Name() }

// Run re-runs t under strace, tracing syscall, and returns the child's
// output (strace's lines and what the child printed) and what each
// completed call returned. It skips t when strace is missing or cannot
// trace here.
func Run(t *testing.T, syscall string) (out []byte, results []int64) {
	t.Helper()
	strace, err := exec.LookPath("strace")
	if err != nil {
		t.Skip("strace is not installed (apt-get install -y strace)")
	}
	cmd := exec.Command(strace, "-f", "-qq", "-e", "trace="+syscall, "-e", "signal=none", "-o", "/dev/stdout",
		os.Args[0], "-test.run", "^"+t.Name()+"$", "-test.count", "1")
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name())
	out, err = cmd.CombinedOutput()
	if err != nil && bytes.Contains(out, []byte("ptrace")) {
		t.Skipf("strace cannot trace here: %s", out)
	}
	if err != nil {
		t.Fatalf("the traced child failed: %v\n%s", err, out)
	}
	// "name(...) = n", or "<... name resumed>) = n" for a call another
	// thread's line interrupted.
	re := regexp.MustCompile(`(?m)\b` + syscall + `\b.*\) += (\d+)$`)
	for _, m := range re.FindAllSubmatch(out, -1) {
		n, _ := strconv.ParseInt(string(m[1]), 10, 64)
		results = append(results, n)
	}
	return out, results
}

// Sum adds up results.
func Sum(results []int64) int64 {
	var s int64
	for _, n := range results {
		s += n
	}
	return s
}

// Report, in the child, prints a number for the parent to read back with
// Reported.
func Report(label string, n int64) { fmt.Printf("stracetest %s=%d\n", label, n) }

// Reported returns the number the child reported under label.
func Reported(t *testing.T, out []byte, label string) int64 {
	t.Helper()
	m := regexp.MustCompile(`stracetest ` + regexp.QuoteMeta(label) + `=(\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("the child reported no %s:\n%s", label, out)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n
}
