//go:build linux || freebsd

package blockdev

import (
	"os"

	"golang.org/x/sys/unix"
)

// DropCache advises the kernel that the range [off, off+n) of f will
// not be read again soon, so its pages may leave the page cache
// (posix_fadvise DONTNEED). Advice only.
func DropCache(f *os.File, off, n int64) { _ = unix.Fadvise(int(f.Fd()), off, n, unix.FADV_DONTNEED) }
