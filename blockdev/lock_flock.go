//go:build darwin || freebsd || (linux && segstore_flock)

package blockdev

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// lockFile takes an exclusive flock(2) on f without waiting (macOS and
// FreeBSD have no OFD locks; a flock, too, belongs to the open file
// description). held reports that another open has it. The tag
// segstore_flock builds this for Linux, so that its tests run there.
func lockFile(f *os.File) (held bool, err error) {
	return retryWhileProbed(func() (bool, error) {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return true, nil
		}
		return false, err
	})
}

// queryLock reports whether another open holds f's lock. A flock cannot
// be queried without being taken: the query takes a shared flock and
// drops it at once, so it fails against an exclusive holder only.
func queryLock(f *os.File) (held bool, err error) {
	err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return false, unix.Flock(int(f.Fd()), unix.LOCK_UN)
}
