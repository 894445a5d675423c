package blockdev

import (
	"errors"

	"golang.org/x/sys/unix"
)

// syncCall names datasync in errors.
const syncCall = "F_FULLFSYNC"

// datasync is fcntl(F_FULLFSYNC): on macOS a plain fsync only hands the
// data to the drive, whose volatile cache can still lose it on power
// loss; F_FULLFSYNC also flushes that cache (at the cost of a full cache
// flush per call, several times an fsync). F_BARRIERFSYNC only orders
// writes and promises nothing when it returns, which would break an
// acknowledged append. Filesystems without F_FULLFSYNC (ENOTSUP: SMB,
// some FUSE) get fsync, the most they offer, as Go's own File.Sync does.
func datasync(fd uintptr) error {
	for {
		_, err := unix.FcntlInt(fd, unix.F_FULLFSYNC, 0)
		if errors.Is(err, unix.ENOTSUP) {
			err = unix.Fsync(int(fd))
		}
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Allocate reserves the space with fcntl(F_PREALLOCATE), contiguous if
// the filesystem can, else anywhere, then sets the size to cover the
// range (F_PREALLOCATE does not change it). A filesystem that reserves
// nothing (ENOTSUP, EINVAL) only has the size set.
func (d *File) Allocate(off, n int64) error {
	size, err := d.Size()
	if err != nil {
		return err
	}
	if grow := off + n - size; grow > 0 {
		err := control(d.f, d.path, "F_PREALLOCATE", func(fd uintptr) error {
			st := unix.Fstore_t{Flags: unix.F_ALLOCATECONTIG | unix.F_ALLOCATEALL, Posmode: unix.F_PEOFPOSMODE, Length: grow}
			err := unix.FcntlFstore(fd, unix.F_PREALLOCATE, &st)
			if err != nil { // no contiguous run that long: anywhere will do
				st.Flags = unix.F_ALLOCATEALL
				err = unix.FcntlFstore(fd, unix.F_PREALLOCATE, &st)
			}
			if errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EINVAL) {
				return nil
			}
			return err
		})
		if err != nil {
			return err
		}
	}
	return d.extendTo(off + n)
}
