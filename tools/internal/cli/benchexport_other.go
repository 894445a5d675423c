//go:build !linux

package cli

import (
	"errors"
	"io"
)

// ExportBench compares Linux's export system calls (sendfile with an
// explicit offset, splice through a pipe, a thread's own CPU time, CPU
// affinity), so it runs on Linux only.
func ExportBench(out io.Writer, opts ExportBenchOptions) ([]ExportResult, error) {
	return nil, errors.New("segtool: bench export measures Linux's sendfile and splice paths: run it on Linux")
}
