//go:build unix

package blockdev

import (
	"os"

	"golang.org/x/sys/unix"
)

// Map maps the first size bytes of f into memory, shared with the file:
// read-only, or, with writable, also for stores, which reach the file and
// every other mapping of it (in other processes too). The mapping stays
// valid after f is closed, until Unmap.
func Map(f *os.File, size int, writable bool) ([]byte, error) {
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	// Through the descriptor's own reference (not Fd, which a concurrent
	// Close frees, and another open may reuse, under the mmap).
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var b []byte
	var merr error
	if err := rc.Control(func(fd uintptr) { b, merr = unix.Mmap(int(fd), 0, size, prot, unix.MAP_SHARED) }); err != nil {
		return nil, err
	}
	return b, merr
}

// Unmap releases a mapping made by Map; b must be the whole slice Map
// returned, and nothing may touch it afterwards.
func Unmap(b []byte) error { return unix.Munmap(b) }

// AdviseSequential tells the kernel that the mapping b will be read in
// order, so that it reads ahead. Advice only.
func AdviseSequential(b []byte) { _ = unix.Madvise(b, unix.MADV_SEQUENTIAL) }
