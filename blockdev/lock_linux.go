//go:build linux && !segstore_flock

package blockdev

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile takes an open file description (OFD) lock, F_OFD_SETLK, on
// the whole of f, without waiting; held reports that another open has
// it. Unlike a flock, an OFD lock can be queried without being taken
// (queryLock).
func lockFile(f *os.File) (held bool, err error) {
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart} // Len 0: the whole file
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return true, nil
		}
		return false, err
	}
	return false, nil
}

// queryLock reports whether another open holds f's lock, without taking
// it (F_OFD_GETLK).
func queryLock(f *os.File) (held bool, err error) {
	// A query for a write lock finds any lock that would conflict with one.
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: io.SeekStart}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
		return false, err
	}
	return lk.Type != unix.F_UNLCK, nil
}
