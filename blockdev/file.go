package blockdev

import (
	"fmt"
	"os"

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
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	if opts.Create {
		flag |= os.O_CREATE
	}
	f, err := openFile(path, flag, opts.Perm, !opts.Buffered)
	if err != nil {
		if reason, refused := refusedDirect(err); !opts.Buffered && refused {
			return nil, &UnsupportedError{Path: path, FS: fsName, Reason: reason}
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

func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := checkAligned("read", d.path, d.align, p, off); err != nil {
		return 0, err
	}
	if d.direct {
		return readDirect(d.f, p, off)
	}
	return d.f.ReadAt(p, off)
}

func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := checkAligned("write", d.path, d.align, p, off); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

// Sync makes the file's completed writes durable with the platform's
// durability call (fdatasync on Linux; see Datasync). The descriptor is
// reached through SyscallConn so a concurrent Close yields os.ErrClosed
// instead of syncing a reused number.
func (d *File) Sync() error { return control(d.f, d.path, syncCall, datasync) }

// Datasync makes f's completed writes durable with the call File.Sync
// uses: fdatasync on Linux, F_FULLFSYNC on macOS, fsync on FreeBSD,
// FlushFileBuffers on Windows. For files kept beside a Device (a
// follower's stage, a baseline's log).
func Datasync(f *os.File) error { return control(f, f.Name(), syncCall, datasync) }

// control runs fn on f's descriptor (a handle on Windows), naming op and
// path in its error.
func control(f *os.File, path, op string, fn func(fd uintptr) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("blockdev: %s %s: %w", op, path, err)
	}
	var opErr error
	if err := rc.Control(func(fd uintptr) { opErr = fn(fd) }); err != nil {
		// The only failure of Control is a closed (or closing) file.
		return fmt.Errorf("blockdev: %s %s: %w", op, path, os.ErrClosed)
	}
	if opErr != nil {
		return fmt.Errorf("blockdev: %s %s: %w", op, path, opErr)
	}
	return nil
}

// extendTo makes the file at least end bytes long (the added range reads
// as zeros), for Allocate where the platform reserves nothing.
func (d *File) extendTo(end int64) error {
	size, err := d.Size()
	if err != nil || size >= end {
		return err
	}
	return d.Truncate(end)
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
