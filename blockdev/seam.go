package blockdev

import (
	"errors"
	"io"
	"os"
	"time"
)

// Optional capabilities of a Dir. A Dir is all the engine needs to keep a
// log of its own; a log that shares its directory with other processes
// (a writer's lock, readers that follow a writer, a published durable
// end) or that takes files from peers needs more of it, and asks for each
// piece through one of these small interfaces, once, when the log opens.
// A Dir that lacks one gets the documented fallback of the feature that
// needs it (no lock; Refresh and imports refused; no published end;
// polling instead of a watch). OSDir and SimDir implement all of them;
// a wrapper that embeds a Dir has none of them unless it adds them.
//
// Each method is safe for concurrent use, and takes a base name inside
// the directory (one with a path separator is refused).

// Locker is a directory a writer can lock, so that two writers, in one
// process or two, never open one store.
type Locker interface {
	// Lock takes an exclusive lock named name in the directory. It fails
	// at once, with a *LockedError (errors.Is(err, ErrLocked)), while
	// another Lock of that name holds it, in this process too. The
	// returned function releases it.
	Lock(name string) (release func() error, err error)
	// LockHolder reports, without taking it, whether some Lock holds the
	// lock name, and the process id of its holder (0 if unknown).
	LockHolder(name string) (held bool, pid int, err error)
}

// Stater is a directory that can tell its files apart, whatever their
// names: a reader that holds a file open learns from it whether the name
// it opened still names that file (a writer renames a rewrite over a
// segment, or creates a file anew under a removed name).
type Stater interface {
	// Stat describes the file name names now; an error wrapping
	// fs.ErrNotExist if there is none.
	Stat(name string) (FileStat, error)
	// StatDevice describes the file an open device of the directory
	// holds, whatever happened to its name since it was opened.
	StatDevice(dev Device) (FileStat, error)
}

// FileStat is what a Stater says of one file: which file it is, its size
// and when it was last written.
type FileStat struct {
	Size int64
	// ModTime is when the file was last written; zero where the directory
	// keeps no such time (SimDir).
	ModTime time.Time
	id      any // os.FileInfo (OSDir), *Sim (SimDir); nil for none
}

// SameFile reports whether a and b describe the same file. A zero
// FileStat is no file, the same as none.
func (a FileStat) SameFile(b FileStat) bool {
	switch x := a.id.(type) {
	case os.FileInfo:
		y, ok := b.id.(os.FileInfo)
		return ok && os.SameFile(x, y)
	case *Sim:
		return x == b.id
	}
	return false
}

// PlainFile is a file opened through the page cache, without direct I/O:
// reads and writes of any length at any offset. Read and Write move a
// position of its own. Sync makes what was written, and the file's size,
// durable, and, as a Device's, is never to be retried after it fails.
// Truncate sets the file's size (zeros past the old end), durable at the
// next Sync; it needs a file opened for writing. An OSDir's is an
// *os.File, so that io.Copy between it and a socket uses sendfile or
// splice, and between it and another *os.File copy_file_range; its Sync
// is os.File's (an fsync on Linux: Datasync, an fdatasync there, is the
// cheaper way to make its data durable).
type PlainFile interface {
	io.Reader
	io.ReaderAt
	io.Writer
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Close() error
}

// PlainOpener is a directory that opens files without direct I/O: for
// files whose bytes come from elsewhere at any length (a segment received
// from a peer) and small files read whole through the page cache.
type PlainOpener interface {
	// OpenPlain opens name with flag, as os.OpenFile does (os.O_RDONLY,
	// os.O_WRONLY or os.O_RDWR, with os.O_CREATE and os.O_TRUNC), a
	// created file with mode 0o644. It never waits: a name that is not
	// a regular file (a FIFO) is refused with ErrNotRegular.
	OpenPlain(name string, flag int) (PlainFile, error)
	// ReopenPlain opens again, read-only and with a position of its own,
	// the file an open device of the directory holds, whatever happened
	// to its name since (where the system can tell: see Reopen): to
	// export a segment through the page cache while it is also read
	// with direct I/O.
	ReopenPlain(dev Device) (PlainFile, error)
}

// SharedMapping is a small file mapped into memory, shared with every
// other mapping of it: a store into Bytes reaches the other mappings (in
// other processes too, for an OSDir), and the file, but makes no file
// event; a watcher learns of it from a ReadAt or WriteAt (see Watcher).
type SharedMapping interface {
	// Bytes is the mapped memory, page-aligned, len the size mapped. It
	// is valid until Close; callers load and store whole aligned words
	// atomically where other mappings may touch them at once.
	Bytes() []byte
	// Stat describes the file mapped, as it was when it was mapped.
	Stat() FileStat
	// ReadAt and WriteAt read and write the file through a descriptor of
	// the writable mapping's own (ReadAt never updates the file's access
	// time where the system allows, so it never waits on the file
	// system's journal). A read-only mapping keeps no descriptor: they
	// fail with os.ErrClosed there.
	io.ReaderAt
	io.WriterAt
	// Close unmaps the file (and closes the mapping's descriptors).
	// Nothing may touch Bytes afterwards.
	Close() error
}

// Mapper is a directory whose small files can be mapped shared.
type Mapper interface {
	// MapShared maps the first size bytes of name. Writable, it creates
	// the file if needed and sets its size to size before mapping it.
	// Read-only, it refuses a file that is not a regular file
	// (ErrNotRegular; it never waits on a FIFO) or that is shorter than
	// size (ErrShortFile), and creates nothing.
	MapShared(name string, size int, writable bool) (SharedMapping, error)
}

// ErrShortFile: a read-only MapShared found the file shorter than the
// size to map (being created by its writer, or not the file expected).
var ErrShortFile = errors.New("blockdev: the file is shorter than the size to map")

// Watcher is a directory that can say when its files change.
type Watcher interface {
	// Watch returns a channel that is ready (events coalesced) after a
	// file of the directory was written, created, renamed or removed, or
	// after one of the files named in reads was read (a ReadAt of a
	// SharedMapping, for one), and a function that stops watching. A
	// named file that does not exist yet, or is replaced, is watched from
	// the moment it appears. ErrNoWatch: the platform cannot watch; the
	// caller polls instead.
	Watch(reads ...string) (<-chan struct{}, func(), error)
}

var (
	_ Locker      = (*OSDir)(nil)
	_ Stater      = (*OSDir)(nil)
	_ PlainOpener = (*OSDir)(nil)
	_ Mapper      = (*OSDir)(nil)
	_ Watcher     = (*OSDir)(nil)
	_ Locker      = (*SimDir)(nil)
	_ Stater      = (*SimDir)(nil)
	_ PlainOpener = (*SimDir)(nil)
	_ Mapper      = (*SimDir)(nil)
	_ Watcher     = (*SimDir)(nil)
	_ PlainFile   = (*os.File)(nil)
)
