package blockdev

import (
	"fmt"
	"os"
	"path/filepath"
)

// Watch watches the directory with WatchDir.
func (d *OSDir) Watch(reads ...string) (<-chan struct{}, func(), error) {
	for _, name := range reads {
		if err := checkName(d.path, name); err != nil {
			return nil, nil, err
		}
	}
	return WatchDir(d.path, reads...)
}

// Stat is os.Stat of name.
func (d *OSDir) Stat(name string) (FileStat, error) {
	if err := checkName(d.path, name); err != nil {
		return FileStat{}, err
	}
	fi, err := os.Stat(filepath.Join(d.path, name))
	if err != nil {
		return FileStat{}, fmt.Errorf("blockdev: %w", err)
	}
	return osFileStat(fi), nil
}

// StatDevice is a stat of the file dev holds (a *File's).
func (d *OSDir) StatDevice(dev Device) (FileStat, error) {
	f := dev.File()
	if f == nil {
		return FileStat{}, fmt.Errorf("blockdev: stat %s: not a file of %s", dev.Name(), d.path)
	}
	fi, err := f.Stat()
	if err != nil {
		return FileStat{}, fmt.Errorf("blockdev: %w", err)
	}
	return osFileStat(fi), nil
}

func osFileStat(fi os.FileInfo) FileStat {
	return FileStat{Size: fi.Size(), ModTime: fi.ModTime(), id: fi}
}

// OpenPlain is OpenRegular of name (os.OpenFile, mode 0o644, that
// never waits and refuses anything but a regular file with
// ErrNotRegular: opening a FIFO to read it waits for a writer forever).
func (d *OSDir) OpenPlain(name string, flag int) (PlainFile, error) {
	if err := checkName(d.path, name); err != nil {
		return nil, err
	}
	f, err := OpenRegular(filepath.Join(d.path, name), flag)
	if err != nil {
		return nil, err // an *fs.PathError from the open, as os.OpenFile's callers had it
	}
	return f, nil
}

// ReopenPlain is Reopen of the file dev holds.
func (d *OSDir) ReopenPlain(dev Device) (PlainFile, error) {
	f := dev.File()
	if f == nil {
		return nil, fmt.Errorf("blockdev: reopen %s: not a device of a real directory", dev.Name())
	}
	nf, err := Reopen(f)
	if err != nil {
		return nil, fmt.Errorf("blockdev: reopen %s: %w", dev.Name(), err)
	}
	return nf, nil
}

// MapShared maps name with Map: a writable mapping keeps the file open
// for WriteAt, and a second, read-only descriptor for ReadAt, opened
// O_NOATIME where the system has it (and the caller owns the file), so
// that its reads never update the inode.
func (d *OSDir) MapShared(name string, size int, writable bool) (SharedMapping, error) {
	if err := checkName(d.path, name); err != nil {
		return nil, err
	}
	path := filepath.Join(d.path, name)
	if !writable {
		// OpenRegular never waits (opening a FIFO to read it would wait
		// for a writer) and refuses anything but a regular file.
		f, err := OpenRegular(path, os.O_RDONLY)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return nil, err
		}
		if fi.Size() < int64(size) {
			return nil, fmt.Errorf("%w: %s holds %d bytes, not %d", ErrShortFile, path, fi.Size(), size)
		}
		mem, err := Map(f, size, false)
		if err != nil {
			return nil, err
		}
		return &osMapping{mem: mem, stat: osFileStat(fi)}, nil
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(int64(size)); err != nil {
		f.Close()
		return nil, err
	}
	wake, err := os.OpenFile(path, os.O_RDONLY|noAtime, 0)
	if err != nil && noAtime != 0 { // O_NOATIME is for the file's owner only
		wake, err = os.OpenFile(path, os.O_RDONLY, 0)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	mem, err := Map(f, size, true)
	if err != nil {
		f.Close()
		wake.Close()
		return nil, fmt.Errorf("mapping %s: %w", path, err)
	}
	m := &osMapping{mem: mem, f: f, wake: wake}
	if fi, err := f.Stat(); err == nil {
		m.stat = osFileStat(fi)
	}
	return m, nil
}

// osMapping is an OSDir's SharedMapping: f (writable mappings) is the
// file WriteAt writes, wake the descriptor ReadAt reads.
type osMapping struct {
	mem     []byte
	stat    FileStat
	f, wake *os.File
}

func (m *osMapping) Bytes() []byte  { return m.mem }
func (m *osMapping) Stat() FileStat { return m.stat }

func (m *osMapping) ReadAt(p []byte, off int64) (int, error) {
	if m.wake == nil {
		return 0, os.ErrClosed
	}
	return m.wake.ReadAt(p, off)
}

func (m *osMapping) WriteAt(p []byte, off int64) (int, error) {
	if m.f == nil {
		return 0, os.ErrClosed
	}
	return m.f.WriteAt(p, off)
}

func (m *osMapping) Close() error {
	if m.f != nil {
		m.f.Close()
		m.wake.Close()
	}
	return Unmap(m.mem)
}
