//go:build linux

package blockdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/segstore/segstore/alignedbuf"
)

// Options control how Open opens a file.
type Options struct {
	// Create creates the file (mode Perm) if it does not exist.
	Create bool
	// Perm is the mode of a created file. Default 0o644.
	Perm os.FileMode
	// ReadOnly opens the file for reading only.
	ReadOnly bool
	// Buffered opens the file without O_DIRECT: reads and writes go through
	// the page cache, Sync is still fdatasync. This is the explicit fallback
	// for filesystems that refuse or ignore O_DIRECT (tmpfs, some FUSE, NFS,
	// overlay); the alignment contract is unchanged so code behaves the same.
	// Default false: O_DIRECT, and Open fails where it cannot be honoured.
	Buffered bool
}

// File is a Device backed by a regular file.
type File struct {
	f      *os.File
	path   string
	fsName string
	align  Alignment
	direct bool
}

var _ Device = (*File)(nil)

// Open opens path as a Device. With the default options it uses O_DIRECT and
// fails with an *UnsupportedError on filesystems that refuse it or do not
// honour it (tmpfs accepts the flag but enforces nothing and is not durable).
func Open(path string, opts Options) (*File, error) {
	if opts.Perm == 0 {
		opts.Perm = 0o644
	}
	fsName, err := filesystemOf(path)
	if err != nil {
		return nil, err
	}
	if !opts.Buffered {
		if reason, bad := fsWithoutDirectIO[fsName]; bad {
			return nil, &UnsupportedError{Path: path, FS: fsName, Reason: reason}
		}
	}
	flag := unix.O_CLOEXEC
	if opts.ReadOnly {
		flag |= os.O_RDONLY
	} else {
		flag |= os.O_RDWR
	}
	if opts.Create {
		flag |= os.O_CREATE
	}
	if !opts.Buffered {
		flag |= unix.O_DIRECT
	}
	f, err := os.OpenFile(path, flag, opts.Perm)
	if err != nil {
		if !opts.Buffered && errors.Is(err, unix.EINVAL) {
			return nil, &UnsupportedError{Path: path, FS: fsName, Reason: "refused O_DIRECT (EINVAL on open)"}
		}
		return nil, fmt.Errorf("blockdev: open: %w", err)
	}
	d := &File{f: f, path: path, fsName: fsName, direct: !opts.Buffered}
	if opts.Buffered {
		d.align, err = bufferedAlignment(f)
	} else {
		d.align, err = directAlignment(f, path, fsName)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

// fsWithoutDirectIO lists filesystems whose O_DIRECT cannot be trusted even
// when open accepts the flag, with the reason shown to the user.
var fsWithoutDirectIO = map[string]string{
	"tmpfs": "accepts O_DIRECT but neither enforces alignment nor survives a reboot",
	"ramfs": "keeps data only in memory and does not survive a reboot",
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
	var st unix.Statfs_t
	err := unix.Statfs(path, &st)
	if errors.Is(err, unix.ENOENT) {
		err = unix.Statfs(filepath.Dir(path), &st)
	}
	if err != nil {
		return "", fmt.Errorf("blockdev: statfs %s: %w", path, err)
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

// bufferedAlignment: the page cache accepts anything, but the buffered
// fallback keeps the direct contract (see Options.Buffered) so the smallest
// sector size is required, and a page is the preferred block.
func bufferedAlignment(f *os.File) (Alignment, error) {
	return finishAlignment(SectorSize, SectorSize, os.Getpagesize(), "buffered")
}

func finishAlignment(mem, off, block int, source string) (Alignment, error) {
	if !alignedbuf.IsPowerOfTwo(block) || block < off {
		block = off
	}
	a := Alignment{Memory: mem, Offset: off, Block: block, Source: source}
	if !a.valid() {
		return Alignment{}, fmt.Errorf("blockdev: implausible alignment %v", a)
	}
	return a, nil
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

func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := checkAligned("read", d.path, d.align, p, off); err != nil {
		return 0, err
	}
	return d.f.ReadAt(p, off)
}

func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := checkAligned("write", d.path, d.align, p, off); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

// Sync calls fdatasync. The descriptor is reached through SyscallConn so a
// concurrent Close yields os.ErrClosed instead of syncing a reused number.
func (d *File) Sync() error {
	return d.control("fdatasync", func(fd int) error { return unix.Fdatasync(fd) })
}

// Allocate calls fallocate (mode 0: the size grows to cover the range).
func (d *File) Allocate(off, n int64) error {
	return d.control("fallocate", func(fd int) error { return unix.Fallocate(fd, 0, off, n) })
}

func (d *File) control(op string, fn func(fd int) error) error {
	rc, err := d.f.SyscallConn()
	if err != nil {
		return fmt.Errorf("blockdev: %s %s: %w", op, d.path, err)
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil {
		// The only failure of Control is a closed (or closing) file.
		return fmt.Errorf("blockdev: %s %s: %w", op, d.path, os.ErrClosed)
	}
	if opErr != nil {
		return fmt.Errorf("blockdev: %s %s: %w", op, d.path, opErr)
	}
	return nil
}

func (d *File) Truncate(size int64) error {
	if err := d.f.Truncate(size); err != nil {
		return fmt.Errorf("blockdev: %w", err)
	}
	return nil
}

func (d *File) Size() (int64, error) {
	fi, err := d.f.Stat()
	if err != nil {
		return 0, fmt.Errorf("blockdev: %w", err)
	}
	return fi.Size(), nil
}

func (d *File) Alignment() Alignment { return d.align }
func (d *File) Direct() bool         { return d.direct }
func (d *File) Name() string         { return d.path }
func (d *File) File() *os.File       { return d.f }

// Filesystem names the filesystem the file lives on ("ext4", "tmpfs", ...).
func (d *File) Filesystem() string { return d.fsName }

func (d *File) Close() error { return d.f.Close() }

// SyncDir fsyncs a directory, the commit point of a create, rename or remove
// inside it.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("blockdev: sync dir: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("blockdev: fsync directory %s: %w", dir, err)
	}
	return nil
}
