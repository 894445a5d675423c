package blockdev

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// lockOffsetHigh places the lock on one byte at 2^62, far past the end of
// the file: Windows' byte-range locks are mandatory, and the holder's
// process id at the start must stay readable to the opens it refuses.
const lockOffsetHigh = 1 << 30

// lockFile takes an exclusive LockFileEx lock without waiting; it belongs
// to this open (handle) of f. held reports that another open has it.
func lockFile(f *os.File) (held bool, err error) {
	return retryWhileProbed(func() (bool, error) {
		ol := windows.Overlapped{OffsetHigh: lockOffsetHigh}
		err := windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, &ol)
		if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
			return true, nil
		}
		return false, err
	})
}

// queryLock reports whether another open holds f's lock. A LockFileEx
// lock cannot be queried without being taken: the query takes a shared
// lock and drops it at once, so it fails against an exclusive holder
// only.
func queryLock(f *os.File) (held bool, err error) {
	h := windows.Handle(f.Fd())
	ol := windows.Overlapped{OffsetHigh: lockOffsetHigh}
	err = windows.LockFileEx(h, windows.LOCKFILE_FAIL_IMMEDIATELY, 0, 1, 0, &ol)
	if errors.Is(err, windows.ERROR_LOCK_VIOLATION) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	ol = windows.Overlapped{OffsetHigh: lockOffsetHigh}
	return false, windows.UnlockFileEx(h, 0, 1, 0, &ol)
}
