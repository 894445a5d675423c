//go:build linux && !segstore_byname

package blockdev

import (
	"fmt"
	"os"
)

// Reopen opens the file f holds again, read-only and without direct
// I/O, with a file position of its own: through /proc/self/fd, so it is
// the very file f holds even if its name was removed or replaced since.
func Reopen(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nf *os.File
	var openErr error
	if err := rc.Control(func(fd uintptr) {
		nf, openErr = os.Open(fmt.Sprintf("/proc/self/fd/%d", fd))
	}); err != nil {
		return nil, err
	}
	return nf, openErr
}
