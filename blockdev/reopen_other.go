//go:build (!linux && !windows) || segstore_byname

package blockdev

import (
	"fmt"
	"os"
)

// Reopen opens the file f holds again, read-only and without direct
// I/O, with a file position of its own. There is no /proc/self/fd here
// (macOS' /dev/fd shares the position), so it opens f's name and checks
// that it is the same file: a name removed or replaced since fails with
// ErrReplaced. The tag segstore_byname builds this for Linux, so that its
// tests run there.
func Reopen(f *os.File) (*os.File, error) {
	held, err := f.Stat()
	if err != nil {
		return nil, err
	}
	nf, err := os.Open(f.Name())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrReplaced, err)
	}
	if now, err := nf.Stat(); err != nil || !os.SameFile(held, now) {
		nf.Close()
		return nil, fmt.Errorf("%w: %s", ErrReplaced, f.Name())
	}
	return nf, nil
}
