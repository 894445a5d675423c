//go:build linux

package blockdev

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/segstore/segstore/alignedbuf"
)

// openFile opens path with flag (os.O_RDONLY or os.O_RDWR, maybe
// os.O_CREATE) and, if direct, O_DIRECT.
func openFile(path string, flag int, perm os.FileMode, direct bool) (*os.File, error) {
	flag |= unix.O_CLOEXEC
	if direct {
		flag |= unix.O_DIRECT
	}
	return os.OpenFile(path, flag, perm)
}

// refusedDirect reports whether an open's error says the filesystem
// refuses direct I/O, and the reason to show.
func refusedDirect(err error) (string, bool) {
	return "refused O_DIRECT (EINVAL on open)", errors.Is(err, unix.EINVAL)
}

var fsNames = map[int64]string{
	unix.EXT4_SUPER_MAGIC:      "ext4",
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.RAMFS_MAGIC:           "ramfs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlayfs",
	unix.NFS_SUPER_MAGIC:       "nfs",
	unix.FUSE_SUPER_MAGIC:      "fuse",
}

// filesystemOf names the filesystem holding path (or its directory, if path
// does not exist yet).
func filesystemOf(path string) (string, error) {
	st, err := statfs(path)
	if err != nil {
		return "", err
	}
	if name, ok := fsNames[int64(st.Type)]; ok {
		return name, nil
	}
	return fmt.Sprintf("fs-%#x", st.Type), nil
}

// directAlignment asks, in order: statx STATX_DIOALIGN (the filesystem's own
// answer for this file), the block device's logical block size in sysfs, and
// finally a probe of O_DIRECT reads at growing alignments.
func directAlignment(f *os.File, path, fsName string) (Alignment, error) {
	var sx unix.Statx_t
	err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN|unix.STATX_BASIC_STATS, &sx)
	if err != nil {
		return Alignment{}, fmt.Errorf("blockdev: statx %s: %w", path, err)
	}
	block := int(sx.Blksize)
	if sx.Mask&unix.STATX_DIOALIGN != 0 {
		if sx.Dio_mem_align == 0 || sx.Dio_offset_align == 0 {
			// The filesystem says this file cannot do direct I/O.
			return Alignment{}, &UnsupportedError{Path: path, FS: fsName, Reason: "reports (statx) that this file does not support direct I/O"}
		}
		return finishAlignment(int(sx.Dio_mem_align), int(sx.Dio_offset_align), block, "statx")
	}
	if lbs, ok := sysfsLogicalBlockSize(sx.Dev_major, sx.Dev_minor); ok {
		return finishAlignment(lbs, lbs, block, "sysfs")
	}
	for a := SectorSize; a <= 1<<16; a *= 2 {
		buf := alignedbuf.MustAlloc(a, a)
		_, err := unix.Pread(int(f.Fd()), buf, 0)
		if err == nil || !errors.Is(err, unix.EINVAL) {
			return finishAlignment(a, a, block, "probe")
		}
	}
	return Alignment{}, &UnsupportedError{Path: path, FS: fsName, Reason: "rejected every O_DIRECT read probe up to 64 KiB alignment"}
}

func sysfsLogicalBlockSize(major, minor uint32) (int, bool) {
	base := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	// A partition has no queue/ of its own; its parent disk does.
	for _, p := range []string{base + "/queue/logical_block_size", base + "/../queue/logical_block_size"} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && alignedbuf.IsPowerOfTwo(n) {
			return n, true
		}
	}
	return 0, false
}

// syncCall names datasync in errors.
const syncCall = "fdatasync"

func datasync(fd uintptr) error { return unix.Fdatasync(int(fd)) }

// Allocate calls fallocate (mode 0: the size grows to cover the range).
func (d *File) Allocate(off, n int64) error {
	return control(d.f, d.path, "fallocate", func(fd uintptr) error { return unix.Fallocate(int(fd), 0, off, n) })
}
