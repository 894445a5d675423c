package blockdev

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
)

// Lock takes the in-process lock name of the directory: a SimDir is
// never shared between processes, so its lock is a name held in memory,
// and no file. A held lock fails as a real one held by this process
// does (a *LockedError with this process's id). A crash (Crash) returns
// a directory with no lock held.
func (d *SimDir) Lock(name string) (release func() error, err error) {
	if err := checkName("sim", name); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.locks[name] {
		return nil, &LockedError{Path: filepath.Join(d.Path(), name), PID: os.Getpid()}
	}
	if d.locks == nil {
		d.locks = map[string]bool{}
	}
	d.locks[name] = true
	var released atomic.Bool
	return func() error {
		if released.Swap(true) {
			return fmt.Errorf("blockdev: unlock sim:%s: %w", name, os.ErrClosed)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.locks, name)
		return nil
	}, nil
}

// LockHolder reports whether Lock holds name (its holder is this
// process).
func (d *SimDir) LockHolder(name string) (held bool, pid int, err error) {
	if err := checkName("sim", name); err != nil {
		return false, 0, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.locks[name] {
		return true, os.Getpid(), nil
	}
	return false, 0, nil
}

// Stat describes the Sim name names now: two stats are the same file
// while they name one Sim (a rename keeps it, a create after a remove
// makes another). It keeps no modification time.
func (d *SimDir) Stat(name string) (FileStat, error) {
	if err := checkName("sim", name); err != nil {
		return FileStat{}, err
	}
	d.mu.Lock()
	s, ok := d.files[name]
	d.mu.Unlock()
	if !ok {
		return FileStat{}, fmt.Errorf("blockdev: stat sim:%s: %w", name, fs.ErrNotExist)
	}
	return s.stat()
}

// StatDevice describes the Sim an open device of the directory holds.
func (d *SimDir) StatDevice(dev Device) (FileStat, error) {
	if s := simOf(dev); s != nil {
		return s.stat()
	}
	return FileStat{}, fmt.Errorf("blockdev: stat %s: not a device of a simulated directory", dev.Name())
}

// simOf is the Sim a device of a SimDir holds; nil for another device.
func simOf(dev Device) *Sim {
	switch x := dev.(type) {
	case *simHandle:
		return x.Sim
	case *Sim:
		return x
	}
	return nil
}

func (s *Sim) stat() (FileStat, error) {
	size, err := s.Size()
	if err != nil {
		return FileStat{}, err
	}
	return FileStat{Size: size, id: s}, nil
}

// OpenPlain opens name as a file of any offset and length: its writes
// are the Sim's writes (synced by Sync, lost or torn by a crash as any
// other), without the alignment a device requires.
func (d *SimDir) OpenPlain(name string, flag int) (PlainFile, error) {
	if err := checkName("sim", name); err != nil {
		return nil, err
	}
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	d.mu.Lock()
	s, err := d.fileLocked("open", name, flag&os.O_CREATE != 0, false)
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	p := &simPlain{s: s, read: acc != os.O_WRONLY, write: acc != os.O_RDONLY}
	if flag&os.O_TRUNC != 0 && p.write {
		if err := s.Truncate(0); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// ReopenPlain opens the Sim that dev holds as a read-only PlainFile.
func (d *SimDir) ReopenPlain(dev Device) (PlainFile, error) {
	s := simOf(dev)
	if s == nil {
		return nil, fmt.Errorf("blockdev: reopen %s: not a device of a simulated directory", dev.Name())
	}
	return &simPlain{s: s, read: true}, nil
}

// simPlain is a SimDir's PlainFile.
type simPlain struct {
	s           *Sim
	read, write bool
	mu          sync.Mutex // guards pos and closed
	pos         int64
	closed      bool
}

func (p *simPlain) check(op string, allowed bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return fmt.Errorf("blockdev: %s %s: %w", op, p.s.label(), os.ErrClosed)
	case !allowed:
		return fmt.Errorf("blockdev: %s %s: not opened for it: %w", op, p.s.label(), fs.ErrPermission)
	}
	return nil
}

func (p *simPlain) ReadAt(b []byte, off int64) (int, error) {
	if err := p.check("read", p.read); err != nil {
		return 0, err
	}
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	return p.s.readAtLocked(b, off)
}

func (p *simPlain) WriteAt(b []byte, off int64) (int, error) {
	if err := p.check("write", p.write); err != nil {
		return 0, err
	}
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	return p.s.writeAtLocked(b, off)
}

func (p *simPlain) Read(b []byte) (int, error) {
	n, err := p.atPos(b, p.ReadAt)
	if n > 0 && err == io.EOF {
		err = nil
	}
	return n, err
}

func (p *simPlain) Write(b []byte) (int, error) { return p.atPos(b, p.WriteAt) }

// atPos runs a ReadAt or WriteAt at the file position and moves the
// position past what it did.
func (p *simPlain) atPos(b []byte, at func([]byte, int64) (int, error)) (int, error) {
	p.mu.Lock()
	off := p.pos
	p.mu.Unlock()
	n, err := at(b, off)
	p.mu.Lock()
	p.pos += int64(n)
	p.mu.Unlock()
	return n, err
}

// Truncate sets the Sim's size, as its own Truncate does: a size change
// that a crash keeps or loses whole, durable at the next Sync.
func (p *simPlain) Truncate(size int64) error {
	if err := p.check("truncate", p.write); err != nil {
		return err
	}
	return p.s.Truncate(size)
}

func (p *simPlain) Sync() error {
	if err := p.check("sync", true); err != nil {
		return err
	}
	return p.s.Sync()
}

func (p *simPlain) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return fmt.Errorf("blockdev: close %s: %w", p.s.label(), os.ErrClosed)
	}
	p.closed = true
	return nil
}

// MapShared maps name: every mapping of one Sim is one shared []byte,
// which holds the file's bytes when it was first mapped; stores into it
// stay in memory (they change neither what the device's reads return nor
// what a crash keeps: nothing may depend on a mapped file's surviving
// one). A writable mapping creates the file and sets its size, as
// device changes; a read-only one changes nothing. The mapping's ReadAt
// wakes the directory's watches of reads of name.
func (d *SimDir) MapShared(name string, size int, writable bool) (SharedMapping, error) {
	if err := checkName("sim", name); err != nil {
		return nil, err
	}
	d.mu.Lock()
	s, err := d.fileLocked("map", name, writable, true)
	d.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if writable {
		if err := s.Truncate(int64(size)); err != nil {
			return nil, err
		}
	} else if n, err := s.Size(); err != nil {
		return nil, err
	} else if n < int64(size) {
		return nil, fmt.Errorf("%w: %s holds %d bytes, not %d", ErrShortFile, s.label(), n, size)
	}
	st, err := s.stat()
	if err != nil {
		return nil, err
	}
	return &simMapping{s: s, mem: s.shared(size), st: st, writable: writable}, nil
}

// shared returns the Sim's mapped memory, size bytes of it, made from its
// content at the first mapping (a larger size makes it anew, and earlier
// mappings keep the old memory).
func (s *Sim) shared(size int) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.mapped) < size {
		m := (Alignment{Memory: 4096, Offset: 4096}).Alloc(size)
		copy(m, s.data)
		s.mapped = m[:size:size]
	}
	return s.mapped[:size:size]
}

// simMapping is a SimDir's SharedMapping.
type simMapping struct {
	s        *Sim
	mem      []byte
	st       FileStat
	writable bool
	closed   atomic.Bool
}

func (m *simMapping) Bytes() []byte  { return m.mem }
func (m *simMapping) Stat() FileStat { return m.st }

func (m *simMapping) ReadAt(p []byte, off int64) (int, error) {
	if !m.writable || m.closed.Load() {
		return 0, os.ErrClosed
	}
	m.s.mu.Lock()
	n, err := m.s.readAtLocked(p, off)
	m.s.mu.Unlock()
	if m.s.changes != nil {
		m.s.changes.read(strings.TrimPrefix(m.s.label(), "sim:"))
	}
	return n, err
}

func (m *simMapping) WriteAt(p []byte, off int64) (int, error) {
	if !m.writable || m.closed.Load() {
		return 0, os.ErrClosed
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	return m.s.writeAtLocked(p, off)
}

func (m *simMapping) Close() error {
	if m.closed.Swap(true) {
		return os.ErrClosed
	}
	return nil
}

// Watch wakes after every change the directory and its files take (as
// Changes counts them: device writes, syncs and size changes, creations,
// removals, renames, directory syncs), and after a read of a file named
// in reads through a SharedMapping.
func (d *SimDir) Watch(reads ...string) (<-chan struct{}, func(), error) {
	for _, name := range reads {
		if err := checkName("sim", name); err != nil {
			return nil, nil, err
		}
	}
	w := &simWatch{ch: make(chan struct{}, 1), reads: append([]string(nil), reads...)}
	c := d.changes
	c.mu.Lock()
	if c.watches == nil {
		c.watches = map[*simWatch]bool{}
	}
	c.watches[w] = true
	c.mu.Unlock()
	var once sync.Once
	return w.ch, func() {
		once.Do(func() {
			c.mu.Lock()
			delete(c.watches, w)
			c.mu.Unlock()
		})
	}, nil
}
