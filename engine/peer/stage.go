package peer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
)

// StageFile is the file, in a follower log's directory, that holds what
// the follower has received of its leader's active segment: the start of
// that segment file, byte for byte, made durable (fdatasync) as each tail
// response arrives. It is imported when the leader seals the segment, and
// taken over by Promote if the leader is lost.
const StageFile = "FOLLOW.stage"

// stage is the follower's durable copy of the start of the leader's active
// segment, kept in the log's directory (engine.Log.Files) through the
// page cache (a blockdev.PlainOpener).
type stage struct {
	dir  blockdev.Dir
	f    blockdev.PlainFile
	path string // the file, for messages
	base uint64 // the segment whose start it holds
	size int64  // bytes held, all durable
}

// openStage opens the stage in dir, keeping of what an earlier run left
// there the longest start that is a segment header and whole, verified
// frames (bytes past them were in flight in a crash, or cut off). It
// syncs the directory: a name the open created is durable only after
// that (blockdev.Dir), and the stage's bytes, once synced, are counted
// as received (FollowStats.Received) and taken over by Promote.
func openStage(dir blockdev.Dir) (*stage, error) {
	path := filepath.Join(dir.Path(), StageFile)
	po, ok := dir.(blockdev.PlainOpener)
	if !ok {
		return nil, fmt.Errorf("peer: the follower's stage %s: the follower keeps it through the page cache, and the log's directory opens no files that way (it is not a blockdev.PlainOpener): open the log on a directory that does, as a real directory does", path)
	}
	f, err := po.OpenPlain(StageFile, os.O_RDWR|os.O_CREATE)
	if err != nil {
		return nil, fmt.Errorf("peer: the follower's stage: %w", err)
	}
	st := &stage{dir: dir, f: f, path: path}
	if err = dir.Sync(); err != nil {
		err = fmt.Errorf("peer: syncing the directory of the follower's stage %s: %w", path, err)
	} else if st.base, st.size, err = verifiedStart(dir, path); err == nil {
		err = st.cut(st.size)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return st, nil
}

// verifiedStart returns the base offset of the segment staged in dir and
// the length of its verified start (0 if not even its header is whole).
func verifiedStart(dir blockdev.Dir, path string) (base uint64, size int64, err error) {
	n, err := dir.Size(StageFile)
	if err != nil || n == 0 {
		if err != nil {
			err = fmt.Errorf("peer: the follower's stage %s: %w", path, err)
		}
		return 0, 0, err
	}
	dev, err := dir.Open(StageFile, blockdev.Options{ReadOnly: true, Buffered: true})
	if err != nil {
		return 0, 0, fmt.Errorf("peer: the follower's stage: %w", err)
	}
	defer dev.Close()
	sc, err := wal.NewScanner(dev)
	if err != nil {
		return 0, 0, nil // no whole header: nothing worth keeping
	}
	for sc.Next() {
	}
	// Whatever stopped the scan (a partial frame, damage, a footer whose
	// import did not happen), the frames before it were verified. A stage
	// that ends inside the header block (a body cut short) keeps what it
	// holds: the scan's end (DataStart) is past it, and cutting to that
	// would put zeros where the leader's header block has its high-water
	// mark.
	return sc.Header().BaseOffset, min(sc.End(), n), nil
}

// holds reports whether the stage holds bytes of segment base.
func (st *stage) holds(base uint64) bool { return st.size > 0 && st.base == base }

// start makes the stage hold segment base, dropping what it held of
// another one.
func (st *stage) start(base uint64) error {
	if st.base == base {
		return nil
	}
	st.base = base
	return st.cut(0)
}

// cut keeps the first size bytes, durably.
func (st *stage) cut(size int64) error {
	if err := st.f.Truncate(size); err != nil {
		return fmt.Errorf("peer: cutting the follower's stage %s to %d bytes: %w", st.path, size, err)
	}
	if err := st.sync(); err != nil {
		return err
	}
	st.size = size
	return nil
}

// sync makes what the stage was given durable: an fdatasync for a real
// file (blockdev.Datasync; os.File's Sync is an fsync, which also writes
// the times nothing here needs), the PlainFile's Sync otherwise.
func (st *stage) sync() error {
	var err error
	if f, ok := st.f.(*os.File); ok {
		err = blockdev.Datasync(f)
	} else {
		err = st.f.Sync()
	}
	if err != nil {
		return fmt.Errorf("peer: the follower's stage: %w", err)
	}
	return nil
}

// append copies n bytes of r to the end of the stage and makes them
// durable; r is not read past them. A stream cut short keeps what
// arrived: the next request continues from there. After a failed
// fdatasync nothing written since the last one can be trusted, so the
// stage is emptied.
func (st *stage) append(r io.Reader, want int64) error {
	n, err := io.Copy(io.NewOffsetWriter(st.f, st.size), io.LimitReader(r, want))
	if n < want && (err == nil || errors.Is(err, io.ErrUnexpectedEOF)) {
		err = fmt.Errorf("%w: the body ended after %d of its %d bytes", ErrBadAnswer, n, want)
	}
	if n == 0 {
		return err
	}
	if serr := st.sync(); serr != nil {
		return errors.Join(serr, st.cut(0))
	}
	st.size += n
	return err
}

// overwrite writes n bytes of r over the stage's first n (which it
// holds), durably. The bytes are read whole first, and must be the header
// block of the staged file (the same file header): an answer cut short
// or stalled (or the follower stopped meanwhile) leaves the stage as it
// was; a whole one of another file empties it.
func (st *stage) overwrite(r io.Reader, n int64) error {
	b := make([]byte, n)
	if got, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			err = fmt.Errorf("%w: the body ended after %d of its %d bytes", ErrBadAnswer, got, n)
		}
		return err
	}
	old := make([]byte, wal.FileHeaderLen)
	if _, err := st.f.ReadAt(old, 0); err != nil {
		return fmt.Errorf("peer: the follower's stage %s: %w", st.path, err)
	}
	if !bytes.Equal(old, b[:wal.FileHeaderLen]) {
		// A whole answer for another file: the leader's segment is not
		// the one staged any more.
		return errors.Join(fmt.Errorf("%w: the header block is another file's than the staged one", ErrBadAnswer), st.cut(0))
	}
	if _, err := st.f.WriteAt(b, 0); err != nil {
		return errors.Join(err, st.cut(0))
	}
	if err := st.sync(); err != nil {
		return errors.Join(err, st.cut(0))
	}
	return nil
}

// reader reads what the stage holds (the imports read st.size bytes).
// A real file is handed over itself, from its start, so that an import
// into a real file copies it within the kernel (copy_file_range, which
// io.Copy uses between two *os.File); another PlainFile is read through
// a section of it.
func (st *stage) reader() (io.Reader, error) {
	f, ok := st.f.(*os.File)
	if !ok {
		return io.NewSectionReader(st.f, 0, st.size), nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("peer: the follower's stage %s: %w", st.path, err)
	}
	return f, nil
}

// remove deletes the stage (it holds nothing the log needs).
func (st *stage) remove() error {
	st.f.Close()
	if err := st.dir.Remove(StageFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("peer: removing the follower's stage: %w", err)
	}
	return nil
}

// Promote makes a follower's log take over what it received of its
// leader's active segment, for when the leader is lost for good: the
// staged start of that segment (durable on the follower, not yet
// readable, since it was waiting for the leader's seal) becomes l's active
// segment, byte for byte (engine.Log.ImportActive), so every record the
// follower received is readable and l can be appended to. l is no longer
// a follower after that: Follow refuses a log with records of its own in
// its active segment. Promote returns how many records it added (0 when
// nothing was staged, or only the start of a segment l already has). Run
// it with no Follow running on l.
func Promote(l *engine.Log) (added uint64, err error) {
	st, err := openStage(l.Files())
	if err != nil {
		return 0, err
	}
	if st.size > 0 && st.base >= l.EndOffset() {
		before := l.EndOffset()
		r, err := st.reader()
		if err == nil {
			_, err = l.ImportActive(r, st.base, st.size)
		}
		if err != nil {
			st.f.Close()
			return 0, fmt.Errorf("peer: promoting the follower's stage %s (segment %d, %d bytes): %w", st.path, st.base, st.size, err)
		}
		added = l.EndOffset() - before
	}
	return added, st.remove()
}
