//go:build darwin || freebsd

package blockdev

import (
	"errors"
	"fmt"
	"os"

	"github.com/ncw/directio"
	"golang.org/x/sys/unix"

	"github.com/segstore/segstore/alignedbuf"
)

// openFile opens path with flag (os.O_RDONLY or os.O_RDWR, maybe
// os.O_CREATE) and, if direct, the platform's direct I/O through
// ncw/directio: F_NOCACHE on macOS, O_DIRECT on FreeBSD.
func openFile(path string, flag int, perm os.FileMode, direct bool) (*os.File, error) {
	if direct {
		return directio.OpenFile(path, flag, perm)
	}
	return os.OpenFile(path, flag, perm)
}

// refusedDirect reports whether an open's error says the filesystem
// refuses direct I/O, and the reason to show.
func refusedDirect(err error) (string, bool) {
	return "refused direct I/O (EINVAL on open)", errors.Is(err, unix.EINVAL)
}

// filesystemOf names the filesystem holding path (or its directory, if
// path does not exist yet), as statfs calls it ("apfs", "ufs", "zfs",
// "tmpfs", ...).
func filesystemOf(path string) (string, error) {
	st, err := statfs(path)
	if err != nil {
		return "", err
	}
	return unix.ByteSliceToString(st.Fstypename[:]), nil
}

// directAlignment: neither F_NOCACHE nor FreeBSD's O_DIRECT refuses a
// misaligned transfer (it goes through the cache instead, silently), and
// neither kernel reports an alignment for direct I/O. The kernels move
// data without a copy when the buffer and the file range are whole
// pages, so a page is required of both, or the filesystem's block
// (fstatfs f_bsize) where that is larger (up to 64 KiB).
func directAlignment(f *os.File, path, fsName string) (Alignment, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return Alignment{}, fmt.Errorf("blockdev: fstatfs %s: %w", path, err)
	}
	page := os.Getpagesize()
	off := page
	if b := int(st.Bsize); alignedbuf.IsPowerOfTwo(b) && b > off && b <= 1<<16 {
		off = b
	}
	return finishAlignment(page, off, off, "statfs")
}
