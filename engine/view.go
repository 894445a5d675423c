package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/debug"
	"sort"
	"sync/atomic"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// SegmentView is one segment file opened for export: a sealed file whole,
// or the active segment up to the durable end it had when the view was
// opened (never an unacknowledged or torn byte). It holds a reference, so
// retention and truncation delete the file only after the view, and every
// mapping made from it, is closed. Exports read through their own
// descriptors, opened without O_DIRECT (sendfile from an O_DIRECT
// descriptor fails with EINVAL once a partial send leaves it at an
// unaligned position), so they go through the page cache; see
// Options.ExportDropCache. Safe for concurrent use.
type SegmentView struct {
	l      *Log
	s      *segment
	info   SegmentInfo
	size   int64
	f      blockdev.PlainFile // for ReadAt
	closed atomic.Bool
}

// OpenSegment opens the segment whose first offset is base for export.
// Close the view when done.
func (l *Log) OpenSegment(base uint64) (*SegmentView, error) {
	if l.closed() {
		return nil, ErrClosed
	}
	s, err := l.segmentAt(base)
	if err != nil {
		return nil, err
	}
	f, err := l.reopen(s)
	if err != nil {
		s.done()
		return nil, err
	}
	v := &SegmentView{l: l, s: s, info: s.info(), f: f}
	v.info.SegmentID = s.hdr.SegmentID // loaded (segmentAt) and held: hdr is set and stays
	v.size = v.info.ExportSize()
	return v, nil
}

// WaitActive returns once segment base is no longer the active segment
// with end durable at file position pos: records after pos became durable,
// or it was sealed (its footer is now exported), cut back or dropped; or
// when ctx is done. A server's long poll on the tail waits with it.
func (l *Log) WaitActive(ctx context.Context, base uint64, pos int64) error {
	return l.waitUntil(ctx, func() (bool, error) {
		segs := *l.segs.Load()
		i := sort.Search(len(segs), func(i int) bool { return segs[i].base >= base })
		if i == len(segs) || segs[i].base != base || l.closed() {
			return true, nil
		}
		return segs[i].isSealed() || segs[i].vis().pos != pos, nil
	})
}

// segmentAt takes a reference on the segment whose base is base and loads
// it if it was trusted through the manifest.
func (l *Log) segmentAt(base uint64) (*segment, error) {
	for {
		segs := *l.segs.Load()
		i := sort.Search(len(segs), func(i int) bool { return segs[i].base >= base })
		if i == len(segs) || segs[i].base != base {
			return nil, fmt.Errorf("%w: no segment starts at offset %d (see Segments)", ErrOutOfRange, base)
		}
		s := segs[i]
		if !s.acquire() {
			continue // dropped meanwhile: look again
		}
		if err := l.ensure(s); err != nil {
			s.done()
			return nil, err
		}
		return s, nil
	}
}

// info describes the segment now.
func (s *segment) info() SegmentInfo {
	first, _ := s.firstEntry()
	s.mu.RLock()
	vis := s.vis() // one snapshot for the record range and the data end
	si := SegmentInfo{Base: s.base, Next: vis.off, DataEnd: vis.pos, Sealed: s.sealed, File: s.name, IndexEntries: len(s.index)}
	if sum := s.sum.Load(); sum != nil {
		si.IndexEntries = sum.Entries
	}
	if s.sealed {
		si.SealedAt, si.FooterCRC = time.Unix(0, s.sealedAt), s.man.crc
	}
	s.mu.RUnlock()
	if !s.loaded.Load() {
		si.IndexEntries = -1
	}
	if si.Next > si.Base {
		si.FirstTime = time.Unix(0, first.time)
	}
	si.Bytes = s.fileSize()
	return si
}

// reopen opens the segment's file again, read-only and without O_DIRECT,
// with a file position of its own (blockdev.PlainOpener.ReopenPlain: on
// Linux the very file the segment holds even if its name was removed or
// replaced since).
func (l *Log) reopen(s *segment) (blockdev.PlainFile, error) {
	if l.caps.plain == nil {
		return nil, fmt.Errorf("engine: segment %s cannot be exported: its directory opens no files through the page cache (a blockdev.PlainOpener, as a real directory is)", s.path)
	}
	f, err := l.caps.plain.ReopenPlain(s.dev)
	if err != nil {
		return nil, fmt.Errorf("engine: reopen segment %s for export: %w", s.path, err)
	}
	return f, nil
}

// dropCache advises the system to drop the page cache of the bytes
// [off, off+n) of an export's file (ExportDropCache); a file that is not
// a real one has no page cache.
func dropCache(f blockdev.PlainFile, off, n int64) {
	if of, ok := f.(*os.File); ok {
		blockdev.DropCache(of, off, n)
	}
}

// Info describes the segment as it was when the view was opened.
func (v *SegmentView) Info() SegmentInfo { return v.info }

// Size is the number of bytes the view exports.
func (v *SegmentView) Size() int64 { return v.size }

// ReadAt reads the view's bytes (io.ReaderAt) through the page cache.
func (v *SegmentView) ReadAt(p []byte, off int64) (int, error) {
	if v.closed.Load() {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("engine: ReadAt at negative offset %d", off)
	}
	if off >= v.size {
		return 0, io.EOF
	}
	short := int64(len(p)) > v.size-off
	if short {
		p = p[:v.size-off]
	}
	n, err := v.f.ReadAt(p, off)
	switch {
	case errors.Is(err, os.ErrClosed): // the view was closed meanwhile
		err = ErrClosed
	case err == nil && short:
		err = io.EOF
	}
	return n, err
}

// WriteTo writes the whole view to w (io.WriterTo): by sendfile when w is
// a TCP or Unix socket, otherwise by a copy (counted in Stats).
func (v *SegmentView) WriteTo(w io.Writer) (int64, error) {
	return v.Section(0, v.size).WriteTo(w)
}

// Section is a byte range of a view, for HTTP ranges and replication. It
// is valid while its view is open.
type Section struct {
	v      *SegmentView
	off, n int64
	err    error
}

// Section returns the bytes [off, off+n) of the view; an invalid range
// makes every WriteTo fail, saying why.
func (v *SegmentView) Section(off, n int64) *Section {
	sec := &Section{v: v, off: off, n: n}
	if off < 0 || n < 0 || off > v.size || n > v.size-off {
		sec.err = fmt.Errorf("%w: range [%d, %d) is outside segment %d's %d bytes", ErrOutOfRange, off, off+n, v.info.Base, v.size)
	}
	return sec
}

// Size is the section's length.
func (sec *Section) Size() int64 { return sec.n }

// WriteTo writes the section to w through a descriptor of its own,
// positioned at the section and wrapped in an io.LimitedReader, so that
// io.Copy reaches sendfile when w is a socket.
func (sec *Section) WriteTo(w io.Writer) (int64, error) {
	if sec.err != nil {
		return 0, sec.err
	}
	v := sec.v
	// A reference of its own keeps the segment's file while it is
	// reopened, even if the view is closed meanwhile.
	if !v.s.acquire() {
		return 0, ErrClosed
	}
	defer v.s.done()
	if v.closed.Load() {
		return 0, ErrClosed
	}
	f, err := v.l.reopen(v.s)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	r := io.Reader(io.NewSectionReader(f, sec.off, sec.n))
	if of, ok := f.(*os.File); ok { // the form io.Copy hands to sendfile
		if _, err := of.Seek(sec.off, io.SeekStart); err != nil {
			return 0, err
		}
		r = &io.LimitedReader{R: of, N: sec.n}
	}
	n, err := io.Copy(w, r)
	if sendsFile(w) {
		v.l.exportSendfile.Add(n)
	} else {
		v.l.exportCopied.Add(n)
	}
	if err == nil && n < sec.n {
		err = fmt.Errorf("engine: export of segment %d ended after %d of %d bytes: %w", v.info.Base, n, sec.n, io.ErrUnexpectedEOF)
	}
	if v.l.opts.ExportDropCache {
		// Pages still in socket buffers cannot be dropped yet; Close
		// advises again for the whole view.
		dropCache(f, sec.off, sec.n)
	}
	return n, err
}

// FileSender is a writer that says whether io.Copy from a file to it ends
// in sendfile: a wrapper around an http.ResponseWriter on a plain TCP
// connection does (net/http hands the copy to the connection), one on TLS
// does not.
type FileSender interface {
	SendsFile() bool
}

// sendsFile reports whether io.Copy to w uses sendfile: the standard
// library does it for TCP and Unix sockets where the platform has it
// (blockdev.SendfileToTCP; not for TLS, whose bytes are encrypted in user
// space); other writers may say so (FileSender).
func sendsFile(w io.Writer) bool {
	switch w := w.(type) {
	case *net.TCPConn, *net.UnixConn:
		return blockdev.SendfileToTCP()
	case FileSender:
		return w.SendsFile()
	}
	return false
}

// Close releases the view's hold on the segment file. Mappings made from
// the view stay valid until they are closed.
func (v *SegmentView) Close() error {
	if v.closed.Swap(true) {
		return ErrClosed
	}
	if v.l.opts.ExportDropCache {
		dropCache(v.f, 0, v.size)
	}
	err := v.f.Close()
	v.s.done()
	return err
}

// Mapping is a sealed segment file mapped read-only into memory: records
// are read in place, with no copy at all. It holds a reference on the
// segment until Close.
type Mapping struct {
	s    *segment
	data []byte
	hdr  wal.FileHeader
	end  position // the records end here (the footer's position)
	// verified: frames below it were checked by an iterator of this mapping
	// (they are contiguous from the first, so one bound says it).
	verified atomic.Int64
	closed   atomic.Bool
}

// Mmap maps the view's file. Only sealed segments are mapped: their bytes
// never change. The mapping is advised for sequential access (the kernel
// reads ahead).
func (v *SegmentView) Mmap() (*Mapping, error) {
	if v.closed.Load() {
		return nil, ErrClosed
	}
	if !v.info.Sealed {
		return nil, fmt.Errorf("%w: segment %d is the active segment; map it once it is sealed (or read it through the view)", ErrNotSealed, v.info.Base)
	}
	f, ok := v.f.(*os.File)
	if !ok {
		return nil, fmt.Errorf("engine: segment %s cannot be mapped: its directory holds no files the system can map (a simulated directory); read it through the view", v.s.path)
	}
	data, err := blockdev.Map(f, int(v.size), false)
	if err != nil {
		return nil, fmt.Errorf("engine: mmap segment %s: %w", v.s.path, err)
	}
	blockdev.AdviseSequential(data)
	if !v.s.acquire() {
		blockdev.Unmap(data)
		return nil, ErrClosed
	}
	return &Mapping{s: v.s, data: data, hdr: v.s.hdr, end: v.s.vis()}, nil
}

// Bytes is the whole mapped file. Valid until Close; touching it after the
// file was truncated by someone else faults the process (the iterator
// catches that, a caller's own access does not).
func (m *Mapping) Bytes() []byte { return m.data }

// Close unmaps the file and releases the segment.
func (m *Mapping) Close() error {
	if m.closed.Swap(true) {
		return ErrClosed
	}
	err := blockdev.Unmap(m.data)
	m.s.done()
	return err
}

// MappedIterator walks the records of a Mapping in place: Record returns
// a slice of the mapped file. Every frame's checksum is verified before
// its records are returned, once per mapping (a second walk of the same
// mapping trusts what the first verified, as the cache trusts a verified
// block). All reads of the mapping happen inside Next under
// debug.SetPanicOnFault, so a fault (the file truncated, or an I/O error
// underneath) stops the iterator with an error instead of crashing.
type MappedIterator struct {
	m     *Mapping
	pos   int64  // next frame's position
	next  uint64 // next frame's first offset
	spans []int  // the current frame's records: start, end pairs in m.data
	k     int    // next record in spans
	first uint64 // offset of the frame's first record
	time  int64
	off   uint64
	rec   []byte
	err   error
}

// NewIterator returns an iterator over the mapping's records, from the
// segment's first.
func (m *Mapping) NewIterator() *MappedIterator {
	return &MappedIterator{m: m, pos: wal.DataStart, next: m.s.base}
}

// Next advances to the next record and reports whether there is one.
func (it *MappedIterator) Next() bool {
	if it.err != nil {
		return false
	}
	if it.m.closed.Load() {
		it.err = ErrClosed
		return false
	}
	for 2*it.k >= len(it.spans) {
		if it.pos >= it.m.end.pos {
			return false
		}
		if it.err = it.loadFrame(); it.err != nil {
			return false
		}
	}
	a, b := it.spans[2*it.k], it.spans[2*it.k+1]
	it.rec, it.off = it.m.data[a:b:b], it.first+uint64(it.k)
	it.k++
	return true
}

// loadFrame reads the frame at it.pos, verifying it unless this mapping
// already did, and lists its records; a fault in the mapping is an error.
func (it *MappedIterator) loadFrame() (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = it.m.s.corrupt("map", it.pos, fmt.Errorf("fault reading the mapped file (truncated or an I/O error underneath): %v", r))
		}
	}()
	m := it.m
	var f wal.Frame
	if h, herr := wal.DecodeFrameHeader(m.data[it.pos:], int(m.hdr.MaxWrite)); herr == nil && h.Type == wal.FrameRecords &&
		h.First == it.next && it.pos+int64(wal.FrameSize(int(h.Length))) <= m.verified.Load() {
		f = wal.Frame{Pos: it.pos, Size: wal.FrameSize(int(h.Length)), First: h.First, Count: int(h.Count), Time: h.Timestamp,
			Payload: m.data[it.pos+wal.FrameHeaderLen : it.pos+wal.FrameHeaderLen+int64(h.Length)]}
	} else {
		found := false
		stop, _, derr := wal.DecodeFrames(m.data[it.pos:m.end.pos], m.hdr, it.pos, it.next, func(fr wal.Frame) bool {
			f, found = fr, true
			return false
		})
		if derr == nil && !found {
			derr = fmt.Errorf("no whole frame at %d before the records' end %d", it.pos, m.end.pos)
		}
		if derr != nil {
			return m.s.corrupt("map", stop, derr)
		}
		for end := f.Pos + int64(f.Size); ; {
			v := m.verified.Load()
			if v >= end || m.verified.CompareAndSwap(v, end) {
				break
			}
		}
	}
	it.spans, it.k = it.spans[:0], 0
	p := int(f.Pos) + wal.FrameHeaderLen
	hl := m.hdr.RecordHeaderLen()
	wal.Records(m.hdr.Version, f.Payload, func(_ int, rec []byte) bool {
		p += hl
		it.spans = append(it.spans, p, p+len(rec))
		p += len(rec)
		return true
	})
	it.pos, it.next = f.Pos+int64(f.Size), f.First+uint64(f.Count)
	it.first, it.time = f.First, f.Time
	return nil
}

// Offset is the current record's offset.
func (it *MappedIterator) Offset() uint64 { return it.off }

// Record is the current record, in the mapping (valid until its Close).
func (it *MappedIterator) Record() []byte { return it.rec }

// Time is when the current record was appended.
func (it *MappedIterator) Time() time.Time { return time.Unix(0, it.time) }

// Err is the error that stopped the iterator, or nil.
func (it *MappedIterator) Err() error { return it.err }
