package blockdev

import (
	"errors"

	"golang.org/x/sys/unix"
)

// syncCall names datasync in errors.
const syncCall = "fdatasync"

// datasync is fdatasync(2) (FreeBSD 11.1 and later).
func datasync(fd uintptr) error {
	for {
		_, _, e := unix.Syscall(unix.SYS_FDATASYNC, fd, 0, 0)
		if e == 0 {
			return nil
		}
		if !errors.Is(e, unix.EINTR) {
			return e
		}
	}
}

// Allocate sets the size to cover the range: FreeBSD reserves nothing
// (posix_fallocate is refused by ZFS, the common filesystem), so the
// range is allocated as it is written.
func (d *File) Allocate(off, n int64) error { return d.extendTo(off + n) }
