//go:build unix

package blockdev

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenRegular opens path with flag (and perm 0o644 if it creates it) without
// ever blocking, and refuses, with ErrNotRegular, anything but a regular
// file: O_NONBLOCK makes the open of a FIFO return at once (it changes
// nothing for a regular file, and is cleared before returning).
func OpenRegular(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag|unix.O_NONBLOCK, 0o644)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%w: %s is a %s: remove it (a writer creates it anew)", ErrNotRegular, path, fileKind(fi.Mode()))
	}
	if err == nil {
		var fl int
		if fl, err = unix.FcntlInt(f.Fd(), unix.F_GETFL, 0); err == nil {
			_, err = unix.FcntlInt(f.Fd(), unix.F_SETFL, fl&^unix.O_NONBLOCK)
		}
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// removeFile and renameFile are os.Remove and os.Rename: on Unix a
// removed or replaced file stays readable to those who hold it.
func removeFile(path string) error             { return os.Remove(path) }
func renameFile(oldPath, newPath string) error { return os.Rename(oldPath, newPath) }

// cleanAside has nothing to do on Unix: removeFile and renameFile never
// move a file aside.
func cleanAside(dir string) {}
