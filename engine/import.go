package engine

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// importSuffix names an import in progress; like every .tmp file it is
// discarded by open.
const importSuffix = ".import" + tmpSuffix

// ImportSegment receives one sealed segment file of size bytes from r
// (typically a socket; io.Copy into the file then uses splice) and appends
// it to the log as a sealed segment, byte for byte as it was sent. The log
// must end where the segment begins, with nothing appended to its active
// segment yet, or hold no records at all (a new follower). The file is
// written to NAME.import.tmp, fsynced, verified completely (header, footer,
// every frame's checksum, offsets contiguous from base), then renamed into
// place with a directory fsync: a partial or bad import leaves nothing
// visible. It needs a directory that opens files without direct I/O
// (see Options.Dir).
func (l *Log) ImportSegment(r io.Reader, base uint64, size int64) (SegmentInfo, error) {
	return l.importFile(r, base, size, false)
}

// ImportActive is ImportSegment for the start of a segment that is not
// sealed: size bytes of a segment file's header and whole frames, no
// footer (a follower's durable copy of its leader's active segment). The
// file becomes the log's active segment, byte for byte, and appends
// continue after its last record. It is how a follower whose leader is
// lost takes over what it received (peer.Promote). The same conditions
// and checks as ImportSegment apply, and the frames must end exactly at
// size.
func (l *Log) ImportActive(r io.Reader, base uint64, size int64) (SegmentInfo, error) {
	return l.importFile(r, base, size, true)
}

func (l *Log) importFile(r io.Reader, base uint64, size int64, active bool) (SegmentInfo, error) {
	refuse := func(format string, args ...any) error {
		return fmt.Errorf("%w: segment %d: %s", ErrImport, base, fmt.Sprintf(format, args...))
	}
	if l.caps.plain == nil {
		return SegmentInfo{}, refuse("imports need a directory that opens files without direct I/O (a blockdev.PlainOpener, as a real directory is)")
	}
	if err := l.importFits(base); err != nil {
		return SegmentInfo{}, err
	}
	if size < wal.DataStart {
		return SegmentInfo{}, refuse("size %d is smaller than a segment file's header", size)
	}
	if limit := l.MaxImportSize(); size > limit {
		return SegmentInfo{}, refuse("%d bytes, more than the %d this log takes (the largest file its own SegmentSize %d, IndexInterval %d and MaxWrite %d can produce): open it with options at least the peer's",
			size, limit, l.opts.SegmentSize, l.opts.IndexInterval, l.opts.MaxWrite)
	}
	tmp := segName(base) + importSuffix
	s, err := l.receive(r, tmp, base, size)
	if err == nil {
		var rec *wal.Recovery
		if active {
			rec, err = l.verifyActive(s, size)
		} else {
			err = l.verifyImport(s)
		}
		switch {
		case err != nil:
			err = fmt.Errorf("%w: %w", ErrImport, err)
			s.release()
		case active:
			err = l.commitActive(s, tmp, rec)
		default:
			err = l.commitImport(s, tmp)
		}
	}
	if err != nil {
		_ = l.dir.Remove(tmp)
		return SegmentInfo{}, err
	}
	return s.info(), nil
}

// Stream is a byte stream whose first bytes were already read (Head: say,
// what a bufio.Reader took in with an HTTP response's headers) and whose
// rest comes from Body, typically a socket. ImportSegment writes Head,
// then copies Body, which splices when Body is a TCP connection.
type Stream struct {
	Head []byte
	Body io.Reader
	// Before, if set, is called before each piece of at most Chunk bytes
	// of Body is copied (a socket's read deadline is renewed there, so a
	// peer that stalls fails the import instead of holding it for ever,
	// while the copy still splices). An error from it refuses the import.
	Before func() error
	Chunk  int64
}

func (s *Stream) Read(p []byte) (int, error) {
	if len(s.Head) > 0 {
		n := copy(p, s.Head)
		s.Head = s.Head[n:]
		return n, nil
	}
	return s.Body.Read(p)
}

// MaxImportSize is the largest segment file the log takes from a peer
// (ImportSegment, ImportActive, and so a follower's stage): the largest
// file its own options can produce. A roll is decided after a batch, at
// the index's granularity, so the data may pass SegmentSize by up to an
// index interval and a batch; the footer adds at most MaxWrite. A peer
// that writes bigger segments needs a log opened with options at least
// its own.
func (l *Log) MaxImportSize() int64 {
	return l.opts.SegmentSize + int64(l.opts.IndexInterval) + 2*int64(l.opts.MaxWrite)
}

// checkImportHeader checks the header of a received file s: it names s's
// base, and the frame size it allows (which bounds every buffer a scan or
// a read of the file allocates) is no larger than this log's own MaxWrite.
func (l *Log) checkImportHeader(s *segment) error {
	if err := l.checkHeader(s); err != nil {
		return err
	}
	if mw := int64(s.hdr.MaxWrite); mw > int64(l.opts.MaxWrite) {
		return s.corrupt("import", 0, fmt.Errorf("the file header allows writes of %d bytes, this log at most %d: open it with MaxWrite at least %d", mw, l.opts.MaxWrite, mw))
	}
	return nil
}

// importFits checks that a segment at base would extend the log.
func (l *Log) importFits(base uint64) error {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.importFitsLocked(base)
}

func (l *Log) importFitsLocked(base uint64) error {
	if err := l.writableLocked(); err != nil {
		return err
	}
	if end := l.active.w.NextOffset(); end != l.active.base {
		return fmt.Errorf("%w: segment %d: the log's active segment already holds records %d..%d; imports extend a log whose last segment is sealed", ErrImport, base, l.active.base, end-1)
	}
	// A log with no sealed segment and no records may start anywhere after
	// its current (empty) start; otherwise the segment must continue it.
	empty := len(*l.segs.Load()) == 1
	if base != l.active.base && (!empty || base < l.active.base) {
		return fmt.Errorf("%w: segment %d does not start where the log ends (offset %d): that would leave a gap or an overlap", ErrImport, base, l.active.base)
	}
	return nil
}

// receive copies the file from r into the temporary file tmp and syncs
// it, returning it as a segment whose device is open, read-only, on tmp.
func (l *Log) receive(r io.Reader, tmp string, base uint64, size int64) (*segment, error) {
	f, err := l.caps.plain.OpenPlain(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC) // not O_APPEND: splice
	if err != nil {
		return nil, fmt.Errorf("engine: import segment %d: %w", base, err)
	}
	var n int64
	before, chunk := func() error { return nil }, size
	if st, ok := r.(*Stream); ok {
		if st.Before != nil && st.Chunk > 0 {
			before, chunk = st.Before, st.Chunk
		}
		if int64(len(st.Head)) <= size {
			var m int
			m, err = f.Write(st.Head)
			n, r = int64(m), st.Body
		}
	}
	for err == nil && n < size {
		if err = before(); err != nil {
			err = fmt.Errorf("%w: segment %d after %d of %d bytes: %w", ErrImport, base, n, size, err)
			break
		}
		piece := min(size-n, chunk)
		var m int64
		m, err = io.Copy(f, io.LimitReader(r, piece)) // a LimitedReader over a socket still splices
		n += m
		if err != nil {
			err = fmt.Errorf("%w: segment %d: receiving failed after %d of %d bytes: %w", ErrImport, base, n, size, err)
		}
		if m < piece {
			break // the stream ended (or failed)
		}
	}
	if err == nil && n < size {
		err = fmt.Errorf("%w: segment %d: the stream ended after %d of %d bytes", ErrImport, base, n, size)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	dev, err := l.dir.Open(tmp, blockdev.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	return l.newSegment(base, dev), nil
}

// verifyImport checks every byte of the received file s: the header names
// base, the footer is whole and agrees with the frames, and every frame's
// checksum and offsets are right.
func (l *Log) verifyImport(s *segment) error {
	sc, err := wal.NewScanner(s.dev) // reads only the header, so far
	if err != nil {
		return s.corrupt("import", 0, err)
	}
	s.hdr = sc.Header()
	if err := l.checkImportHeader(s); err != nil {
		return err
	}
	_, foot, err := wal.ReadSealed(s.dev)
	if err != nil {
		return s.corrupt("import", 0, err)
	}
	if err := s.decodeFooter(foot); err != nil {
		return s.corrupt("import", foot.Pos, err)
	}
	index, _, err := footerIndex(s.hdr, s.base, foot) // all of it, for the checks (s keeps what reads need)
	if err != nil {
		return s.corrupt("import", foot.Pos, err)
	}
	if err := l.checkImportIndex(s, index, foot.Pos); err != nil {
		return err
	}
	// Every index entry must be a record (a frame, before version 3) the
	// scan finds, with its offset and time (reads trust the index to find
	// records). Both are in file order, so one pass matches them.
	check := entryCheck{index: index, hdr: s.hdr}
	mismatch := func(i int) error {
		return s.corrupt("import", foot.Pos, fmt.Errorf("the footer's index entry %d (offset %d at byte %d) does not match a record", i, check.index[i].off, check.index[i].pos))
	}
	next := s.base
	for sc.Next() {
		f := sc.Frame()
		if j := check.frame(f); j >= 0 {
			return mismatch(j)
		}
		next = f.First + uint64(f.Count)
	}
	switch {
	case sc.Err() != nil:
		return s.corrupt("import", sc.End(), sc.Err())
	case sc.Recovery().Torn != nil:
		return s.corrupt("import", sc.Recovery().Torn.Pos, fmt.Errorf("damaged frames at the end: %s", sc.Recovery().Torn.Reason))
	case sc.Footer() == nil || sc.End() != foot.Pos || next != foot.Next:
		return s.corrupt("import", sc.End(), fmt.Errorf("the frames end at %d with offset %d, the footer says %d and %d", sc.End(), next, foot.Pos, foot.Next))
	case check.rest() >= 0:
		return mismatch(check.rest())
	case next == s.base:
		// The engine never seals a segment without records (Roll leaves an
		// empty active segment as it is), and the segment after this one
		// would start at the same offset, under the same file name.
		return fmt.Errorf("segment %d is sealed with no records: a log's sealed segments hold at least one, and the next segment would take this one's file name (the peer's file is not one a segstore log writes)", s.base)
	}
	return nil
}

// checkImportIndex checks that the footer's index entries of a received
// sealed file s, index, whose frames end at dataEnd, are no further apart than
// this log's own writer puts them (an index interval and a frame): a point
// read reads and caches one whole interval, so a peer's sparse index would
// otherwise decide what each read allocates.
func (l *Log) checkImportIndex(s *segment, index []indexEntry, dataEnd int64) error {
	limit := int64(l.opts.IndexInterval) + int64(l.opts.MaxWrite)
	for i, e := range index {
		end := dataEnd
		if i+1 < len(index) {
			end = index[i+1].pos
		}
		if end-e.pos > limit {
			return s.corrupt("import", e.pos, fmt.Errorf("the footer's index entry %d (offset %d) spans %d bytes, this log reads at most %d per interval: open it with IndexInterval at least %d",
				i, e.off, end-e.pos, limit, end-e.pos-int64(l.opts.MaxWrite)))
		}
	}
	return nil
}

// replaceActiveLocked puts the verified file tmp in place of the log's
// empty active segment (a rename over it, or beside it for an empty log
// taking its first segment elsewhere). The caller holds mu, commits the
// rename with a directory fsync and puts s in the list in place of the
// empty segment (replaceLastLocked).
func (l *Log) replaceActiveLocked(s *segment, tmp string) error {
	if err := l.importFitsLocked(s.base); err != nil { // checked again: the log may have moved
		return err
	}
	old := l.active
	if err := old.w.Close(); err != nil {
		return l.fail("importing segment "+s.name, err)
	}
	l.active = nil
	if old.base != s.base {
		if err := l.dir.Remove(old.name); err != nil {
			return l.fail("importing segment "+s.name, err)
		}
	}
	if err := l.dir.Rename(tmp, s.name); err != nil {
		return l.fail("importing segment "+s.name, err)
	}
	return nil
}

// commitImport renames the verified file into place as the last sealed
// segment and starts a new active segment after it. Commit point: the
// rename's directory fsync (done by createSegment, after the manifest).
// It takes the caller's reference to s: the list holds it once s is in
// it, and a failure before lets go of it.
func (l *Log) commitImport(s *segment, tmp string) error {
	defer l.lockChange()()
	listed := false
	defer func() {
		if !listed {
			s.release()
		}
	}()
	if err := l.replaceActiveLocked(s, tmp); err != nil {
		return err
	}
	// Opened again under its name, so errors reading it name the segment's
	// file, not the temporary one it was received as.
	dev, err := l.dir.Open(s.name, blockdev.Options{ReadOnly: true})
	if err != nil {
		return l.fail("opening imported segment "+s.name, err)
	}
	s.dev.Close()
	s.dev = dev
	l.replaceLastLocked(s)
	listed = true
	if err := l.writeManifest(false); err != nil {
		return l.fail("writing the manifest after importing "+s.name, err)
	}
	// Not preallocated: the next import usually replaces it at once (its
	// file grows as needed if appends come instead). Its directory fsync
	// commits the rename too.
	next, err := l.createSegment(s.vis().off, false)
	if err != nil {
		return l.fail("creating the segment after "+s.name, err)
	}
	l.pushLocked(next)
	l.notifyDurable()
	l.noteOpen(s)
	return nil
}

// verifyActive checks every byte of the received start of an unsealed
// segment s: the header names base, every frame's checksum and offsets are
// right, and the frames end exactly at size, with no footer. It builds s's
// index on the way and returns the scan's recovery for the writer.
func (l *Log) verifyActive(s *segment, size int64) (*wal.Recovery, error) {
	sc, err := wal.NewScanner(s.dev)
	if err != nil {
		return nil, s.corrupt("import", 0, err)
	}
	s.hdr = sc.Header()
	if err := l.checkImportHeader(s); err != nil {
		return nil, err
	}
	for sc.Next() {
		s.indexFrame(sc.Frame())
	}
	rec := sc.Recovery()
	switch {
	case sc.Err() != nil:
		return nil, s.corrupt("import", sc.End(), sc.Err())
	case rec.Torn != nil:
		return nil, s.corrupt("import", rec.Torn.Pos, fmt.Errorf("damaged or partial frame at the end: %s", rec.Torn.Reason))
	case sc.Footer() != nil:
		return nil, s.corrupt("import", sc.Footer().Pos, errors.New("the segment is sealed: import it with ImportSegment"))
	case sc.End() != size:
		return nil, s.corrupt("import", sc.End(), fmt.Errorf("the frames end at %d, not at the end of the %d bytes received", sc.End(), size))
	}
	s.visible.Store(&position{pos: sc.End(), off: sc.NextOffset()})
	return rec, nil
}

// commitActive renames the verified file into place as the log's active
// segment, replacing the empty one, and opens its writer after the last
// frame. Commit point: the rename's directory fsync. It takes the
// caller's reference to s, as commitImport does.
func (l *Log) commitActive(s *segment, tmp string, rec *wal.Recovery) error {
	defer l.lockChange()()
	listed := false
	defer func() {
		if !listed {
			s.release()
		}
	}()
	if err := l.replaceActiveLocked(s, tmp); err != nil {
		return err
	}
	if err := l.dir.Sync(); err != nil {
		return l.fail("importing active segment "+s.name, err)
	}
	// Reopen for writing under the final name; the scan's recovery still
	// describes the file, which nothing has written since.
	dev, err := l.dir.Open(s.name, blockdev.Options{})
	if err != nil {
		return l.fail("opening imported active segment "+s.name, err)
	}
	s.dev.Close()
	s.dev = dev
	if s.w, err = wal.Resume(dev, rec, l.walOptions(s)); err != nil {
		return l.fail("opening imported active segment "+s.name, err)
	}
	l.replaceLastLocked(s)
	listed = true
	l.active = s
	l.notifyDurable()
	return nil
}
