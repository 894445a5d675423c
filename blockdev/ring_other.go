//go:build !linux

package blockdev

import (
	"os"
	"sync/atomic"
)

var preadReads atomic.Uint64

// readDirect reads len(p) bytes at off from f, opened for direct I/O.
// Only Linux has a ring for concurrent reads (ring_linux.go).
func readDirect(f *os.File, p []byte, off int64) (int, error) {
	preadReads.Add(1)
	return f.ReadAt(p, off)
}

// ReadPaths returns the process's counts of direct reads so far.
func ReadPaths() ReadPathStats {
	return ReadPathStats{Pread: preadReads.Load(), RingOff: "io_uring is Linux only"}
}
