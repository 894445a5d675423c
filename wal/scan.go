package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
)

// scanChunk is how much the scanner reads at once, in bytes: large enough to
// run at the device's sequential bandwidth, small enough to keep memory flat.
const scanChunk = 1 << 20

// footerReadBack is how much of a sealed file's end ReadSealed reads at
// once: the tail and, usually, the footer (an engine index of 24 bytes per
// 64 KiB interval fits for segments up to ~170 MiB), so one read instead
// of two.
const footerReadBack = 64 << 10

// scanParallel is how many reads lastNonZero keeps in flight (so up to this
// many scanChunk buffers).
const scanParallel = 4

// Frame is one valid frame returned by a Scanner.
type Frame struct {
	Pos      int64  // position in the file
	Size     int    // bytes occupied, header and padding included
	First    uint64 // offset of the first record
	Count    int    // number of records
	Time     int64  // unix nanoseconds
	Checksum uint32 // the frame's CRC-32C, as stored (and verified)
	Payload  []byte // the records (see Records); valid until the next Next
}

// End is the position just past the frame.
func (f Frame) End() int64 { return f.Pos + int64(f.Size) }

// Footer is the footer frame of a sealed file.
type Footer struct {
	Pos  int64  // position of the footer frame: the end of the records
	End  int64  // end of the frame: the file's size
	Next uint64 // offset after the file's last record
	Time int64  // when the file was sealed, unix nanoseconds
	// Data is the caller's footer bytes, followed by up to 7 zero bytes of
	// padding. It is a copy, owned by the caller.
	Data []byte
}

// TornTail describes damage at the end of a file that a crash during the
// last, unsynced write explains: it is cut on open and reported.
type TornTail struct {
	Pos    int64 // where the last valid frame ends
	Bytes  int64 // bytes from Pos to the last non-zero byte
	Reason string
}

// Scanner reads the frames of a wal file in order, verifying each. It stops
// at the clean end (a zeroed header with nothing after it, or the end of the
// file), at a torn tail (Torn) or at corruption (Err). It never modifies the
// device.
type Scanner struct {
	dev        blockdev.Device
	hdr        FileHeader
	size       int64
	pos        int64
	nextOffset uint64
	records    int64
	frames     int
	lastTime   int64

	win              []byte // aligned read window
	winStart, winEnd int64
	readAhead        int64 // bytes fetch reads at least (0: just what is asked)

	frame    Frame
	footer   *Footer
	torn     *TornTail
	err      error
	done     bool
	trustEnd int64 // see TrustCleanEnd
	live     bool  // a Continue scan
}

// TrustCleanEnd tells the scanner that the file was closed cleanly with
// its frames ending at pos and nothing written since: if the frames do end
// there, at a zeroed header, the rest of the file is taken to be zeros
// without being read (the proof otherwise reads up to the whole
// preallocated file). Call it before Next. Only a caller that made sure
// no write can have reached the file after that clean close may call it.
func (s *Scanner) TrustCleanEnd(pos int64) { s.trustEnd = pos }

// Continue returns a scanner of a file that another process may still be
// appending to, from pos on: hdr is the file's header (from an earlier
// scan, so it is not read again), pos the end of a frame that an earlier
// scan of the same file verified, and next the offset after that frame's
// records (DataStart and the base offset for an empty file). Where no
// valid frame is (yet) the scan stops without a verdict, neither Torn nor
// Err, and without reading further: the writer may be writing there. A
// frame out of place, and a footer followed by data, are still errors.
func Continue(dev blockdev.Device, hdr FileHeader, pos int64, next uint64) (*Scanner, error) {
	size, err := dev.Size()
	if err != nil {
		return nil, fmt.Errorf("wal: size of %s: %w", dev.Name(), err)
	}
	return &Scanner{dev: dev, hdr: hdr, size: size, pos: pos, nextOffset: next, live: true, readAhead: liveChunk}, nil
}

// liveChunk is what a Continue scan reads ahead: a writer's recent frames,
// without the megabyte of zeros a full scan's read-ahead would fetch past
// them each time.
const liveChunk = 64 << 10

// NewScanner reads and checks the file header and positions the scanner at
// the first frame.
func NewScanner(dev blockdev.Device) (*Scanner, error) {
	size, err := dev.Size()
	if err != nil {
		return nil, fmt.Errorf("wal: size of %s: %w", dev.Name(), err)
	}
	s := &Scanner{dev: dev, size: size, pos: DataStart}
	b, err := s.fetch(0, DataStart)
	if err != nil {
		return nil, err
	}
	if len(b) < FileHeaderLen || isZero(b[:FileHeaderLen]) {
		return nil, fmt.Errorf("%w: %s has no header (%d bytes; a file created but never initialized, remove it)", ErrNotWAL, dev.Name(), size)
	}
	s.hdr, err = DecodeFileHeader(b)
	if err != nil {
		if errors.Is(err, ErrNotWAL) || errors.Is(err, ErrVersion) {
			return nil, fmt.Errorf("%s: %w", dev.Name(), err)
		}
		return nil, &CorruptionError{File: dev.Name(), Pos: 0, Reason: "file header", Err: err}
	}
	s.nextOffset = s.hdr.BaseOffset
	s.readAhead = scanChunk // from here on the scanner reads sequentially
	return s, nil
}

// Header returns the file header.
func (s *Scanner) Header() FileHeader { return s.hdr }

// Next advances to the next valid frame and reports whether there is one.
func (s *Scanner) Next() bool {
	if s.done {
		return false
	}
	ok, err := s.next()
	if err != nil {
		s.err = err
	}
	if !ok {
		s.done = true
	}
	return ok
}

// Frame returns the current frame.
func (s *Scanner) Frame() Frame { return s.frame }

// Err returns the error that stopped the scan: nil at a clean end or a torn
// tail, a *CorruptionError for damage a crash cannot explain, or an I/O error.
func (s *Scanner) Err() error { return s.err }

// Footer returns the footer the scan stopped at (the file is sealed), or nil.
func (s *Scanner) Footer() *Footer { return s.footer }

// Torn returns the torn tail the scan stopped at, or nil.
func (s *Scanner) Torn() *TornTail { return s.torn }

// End is the position after the last valid frame.
func (s *Scanner) End() int64 { return s.pos }

// NextOffset is the offset after the last valid frame's records.
func (s *Scanner) NextOffset() uint64 { return s.nextOffset }

func (s *Scanner) next() (bool, error) {
	p := s.pos
	if p >= s.size {
		return false, nil
	}
	limit := int(s.hdr.MaxWrite)
	b, err := s.fetch(p, FrameHeaderLen)
	if err != nil {
		return false, err
	}
	if len(b) < FrameHeaderLen {
		return false, s.stop(p, p+int64(len(b)), true, errShortHeader)
	}
	h, err := DecodeFrameHeader(b, limit)
	if err != nil {
		return false, s.stop(p, p+FrameHeaderLen, false, err)
	}
	size := FrameSize(int(h.Length))
	if p+int64(size) > s.size {
		return false, s.stop(p, s.size, true, fmt.Errorf("frame of %d bytes runs past the end of the file (%d)", size, s.size))
	}
	b, err = s.fetch(p, size)
	if err != nil {
		return false, err
	}
	payload := b[FrameHeaderLen : FrameHeaderLen+int(h.Length)]
	if err := VerifyFrame(h, s.hdr.SegmentID, p, payload); err != nil {
		return false, s.stop(p, p+int64(size), false, err)
	}
	if h.First != s.nextOffset {
		// A valid frame cannot come from a tear: this is a frame out of place.
		return false, s.corrupt(p, fmt.Sprintf("frame holds offsets from %d, expected %d", h.First, s.nextOffset), nil)
	}
	if h.Type == FrameFooter {
		s.footer = &Footer{Pos: p, End: p + int64(size), Next: h.First, Time: h.Timestamp,
			Data: append([]byte(nil), payload[:len(payload)-FooterTailLen]...)}
		s.pos = p // the records end here
		// A sealed file ends at its footer; zeros after it are a seal whose
		// final truncate did not happen yet. Anything else is damage.
		if nz, err := s.lastNonZero(s.footer.End); err != nil {
			return false, err
		} else if nz > s.footer.End {
			return false, s.corrupt(s.footer.End, fmt.Sprintf("%d bytes of data after the footer", nz-s.footer.End), nil)
		}
		return false, nil
	}
	s.frame = Frame{Pos: p, Size: size, First: h.First, Count: int(h.Count), Time: h.Timestamp, Checksum: h.checksum, Payload: payload}
	s.pos = p + int64(size)
	s.nextOffset += uint64(h.Count)
	s.records += int64(h.Count)
	s.frames++
	s.lastTime = h.Timestamp
	return true, nil
}

// stop classifies what the scan found at p, where the frame that should be
// there (extending to end, as far as its header can be believed) is not
// valid. The device writes sectors atomically but in any order, and the
// writer never has more than MaxWrite unsynced bytes past the last synced
// frame, whose old content is zeros. So damage is a torn tail when both hold:
//   - the frame has the mark of a tear: it runs past the end of the file, or
//     its bytes within some sector are all zero (the sector was not written);
//   - nothing non-zero lies more than MaxWrite bytes past p.
//
// Otherwise the damage cannot come from a crash and is corruption.
func (s *Scanner) stop(p, end int64, pastEOF bool, why error) error {
	if s.live {
		return nil // not written yet, or being written
	}
	if p == s.trustEnd && errors.Is(why, errZeroHeader) {
		return nil // a clean close said nothing follows
	}
	nz, err := s.lastNonZero(p)
	if err != nil {
		return err
	}
	if nz <= p {
		return nil // zeros (or nothing) from p on: the clean end
	}
	tear := pastEOF
	if !tear {
		if tear, err = s.hasZeroSector(p, min(end, s.size)); err != nil {
			return err
		}
	}
	window := int64(s.hdr.MaxWrite)
	switch {
	case tear && nz-p <= window:
		s.torn = &TornTail{Pos: p, Bytes: nz - p, Reason: why.Error()}
		return nil
	case tear:
		return s.corrupt(p, fmt.Sprintf("%v, and %d bytes of data follow, more than the %d a torn write can leave", why, nz-p, window), nil)
	default:
		return s.corrupt(p, "damaged frame (no sector of it is unwritten, so a crash cannot explain it)", why)
	}
}

func (s *Scanner) corrupt(p int64, reason string, err error) error {
	ce := &CorruptionError{File: s.dev.Name(), Segment: s.hdr.BaseOffset, Pos: p, Reason: reason, Err: err}
	// Say whether the damaged frame claims to be the footer: a caller can
	// then rebuild the footer from the records, which are all intact.
	if b, ferr := s.fetch(p, FrameHeaderLen); ferr == nil && len(b) == FrameHeaderLen {
		ce.InFooter = b[4] == FrameFooter
	}
	return ce
}

// hasZeroSector reports whether some sector overlapping [p, end) holds only
// zeros within that range.
func (s *Scanner) hasZeroSector(p, end int64) (bool, error) {
	for sec := alignedbuf.AlignDown(p, blockdev.SectorSize); sec < end; sec += blockdev.SectorSize {
		from, to := max(p, sec), min(end, sec+blockdev.SectorSize)
		b, err := s.fetch(from, int(to-from))
		if err != nil {
			return false, err
		}
		if isZero(b) {
			return true, nil
		}
	}
	return false, nil
}

// lastNonZero returns the position just past the last non-zero byte at or
// after p, or p if there is none. It reads the rest of the file: the part
// in the read window directly, the rest in scanChunk pieces with up to
// scanParallel reads in flight (a preallocated active segment is mostly
// zeros that must all be read, and the device serves several reads at once
// much faster than one after another).
func (s *Scanner) lastNonZero(p int64) (int64, error) {
	last := p
	q := p
	if p >= s.winStart && p < s.winEnd { // what is already read
		b := s.win[p-s.winStart : s.winEnd-s.winStart]
		if i := lastNonZeroIn(b); i > 0 {
			last = p + int64(i)
		}
		q = s.winEnd
	}
	a := s.dev.Alignment()
	from := q // examine bytes from here on; pieces start on a sector boundary
	q = alignedbuf.AlignDown(q, int64(a.Offset))
	type piece struct {
		at   int64
		last int64
		err  error
	}
	var pieces []piece
	for at := q; at < s.size; at += scanChunk {
		pieces = append(pieces, piece{at: at})
	}
	sem := make(chan struct{}, scanParallel)
	var wg sync.WaitGroup
	for i := range pieces {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			pc := &pieces[i]
			buf := a.Alloc(int(min(scanChunk, alignedbuf.AlignUp(s.size-pc.at, int64(a.Offset)))))
			n, err := s.dev.ReadAt(buf, pc.at)
			if err != nil && !errors.Is(err, io.EOF) {
				pc.err = fmt.Errorf("wal: read %s at %d (%d bytes): %w", s.dev.Name(), pc.at, len(buf), err)
				return
			}
			skip := min(max(from-pc.at, 0), int64(n)) // bytes before from belong to frames
			if i := lastNonZeroIn(buf[skip:n]); i > 0 {
				pc.last = pc.at + skip + int64(i)
			}
		}()
	}
	wg.Wait()
	for _, pc := range pieces {
		if pc.err != nil {
			return 0, pc.err
		}
		last = max(last, pc.last)
	}
	return last, nil
}

// lastNonZeroIn returns the index just past the last non-zero byte of b,
// or 0.
func lastNonZeroIn(b []byte) int {
	if isZero(b) {
		return 0
	}
	i := len(b) - 1
	for b[i] == 0 {
		i--
	}
	return i + 1
}

// fetch returns the file bytes [p, p+n), fewer at the end of the file. The
// slice is valid until the next fetch.
func (s *Scanner) fetch(p int64, n int) ([]byte, error) {
	if p >= s.winStart && p+int64(n) <= s.winEnd {
		return s.win[p-s.winStart : p-s.winStart+int64(n)], nil
	}
	a := s.dev.Alignment()
	start := alignedbuf.AlignDown(p, int64(a.Offset))
	length := alignedbuf.AlignUp(p+int64(n), int64(a.Offset)) - start
	// Read ahead, but not past the end of the file.
	length = max(length, min(s.readAhead, alignedbuf.AlignUp(s.size, int64(a.Offset))-start))
	if int64(len(s.win)) < length {
		s.win = a.Alloc(int(length))
	}
	m, err := s.dev.ReadAt(s.win[:length], start)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("wal: read %s at %d (%d bytes): %w", s.dev.Name(), start, length, err)
	}
	s.winStart, s.winEnd = start, start+int64(m)
	avail := max(min(int64(n), s.winEnd-p), 0)
	return s.win[p-start : p-start+avail], nil
}

// Recovery is what a scan of a whole file found.
type Recovery struct {
	Header     FileHeader
	End        int64     // position after the last valid frame
	NextOffset uint64    // offset the next record gets
	Frames     int       // valid frames
	Records    int64     // records in them
	LastTime   int64     // timestamp of the last valid frame (0 if none)
	Torn       *TornTail // the torn tail found, nil if the file ended cleanly
	Footer     *Footer   // the footer of a sealed file, nil if not sealed
}

// Recovery summarizes the scan; it is complete once Next has returned
// false with a nil Err.
func (s *Scanner) Recovery() *Recovery {
	return &Recovery{Header: s.hdr, End: s.pos, NextOffset: s.nextOffset, Frames: s.frames, Records: s.records,
		LastTime: s.lastTime, Torn: s.torn, Footer: s.footer}
}

// Recover scans a whole file read-only and reports where its valid frames
// end. It returns a *CorruptionError (errors.Is(err, ErrCorrupt)) for damage
// that a crash cannot explain; it never returns corrupt data as valid.
func Recover(dev blockdev.Device) (*Recovery, error) {
	s, err := NewScanner(dev)
	if err != nil {
		return nil, err
	}
	for s.Next() {
	}
	if s.Err() != nil {
		return nil, s.Err()
	}
	return s.Recovery(), nil
}

// ReadSealed reads the header and the footer of a sealed file without
// scanning its records: the footer is found from the file's last 16 bytes
// and verified (checksum, position, type). It returns ErrNotSealed when the
// file does not end with a footer tail (an unsealed file, or a seal whose
// final truncate did not happen: Recover handles both), and a
// *CorruptionError with InFooter set when the footer is damaged.
func ReadSealed(dev blockdev.Device) (FileHeader, *Footer, error) {
	s, err := NewScanner(dev)
	if err != nil {
		return FileHeader{}, nil, err
	}
	s.readAhead = 0
	size := s.size
	if size < DataStart+FrameHeaderLen+FooterTailLen || size%FrameAlign != 0 {
		return s.hdr, nil, fmt.Errorf("%s: %w (size %d)", dev.Name(), ErrNotSealed, size)
	}
	// One read for the tail and, usually, the whole footer behind it.
	back := min(footerReadBack, size-DataStart)
	if _, err := s.fetch(size-back, int(back)); err != nil {
		return s.hdr, nil, err
	}
	tail, err := s.fetch(size-FooterTailLen, FooterTailLen)
	if err != nil {
		return s.hdr, nil, err
	}
	if len(tail) < FooterTailLen || string(tail[8:]) != FooterMagic {
		return s.hdr, nil, fmt.Errorf("%s: %w", dev.Name(), ErrNotSealed)
	}
	pos := int64(binary.LittleEndian.Uint64(tail))
	footerErr := func(reason string, err error) error {
		return &CorruptionError{File: dev.Name(), Segment: s.hdr.BaseOffset, Pos: pos, Reason: reason, Err: err, InFooter: true}
	}
	if pos < DataStart || pos%FrameAlign != 0 || pos > size-FrameHeaderLen-FooterTailLen {
		return s.hdr, nil, footerErr(fmt.Sprintf("footer tail names impossible position %d in a file of %d bytes", pos, size), nil)
	}
	b, err := s.fetch(pos, int(size-pos))
	if err != nil {
		return s.hdr, nil, err
	}
	h, err := DecodeFrameHeader(b, int(size-pos))
	if err != nil || h.Type != FrameFooter || int64(FrameHeaderLen)+int64(h.Length) != size-pos {
		return s.hdr, nil, footerErr("footer header", err)
	}
	payload := b[FrameHeaderLen:]
	if err := VerifyFrame(h, s.hdr.SegmentID, pos, payload); err != nil {
		return s.hdr, nil, footerErr("footer", err)
	}
	return s.hdr, &Footer{Pos: pos, End: size, Next: h.First, Time: h.Timestamp,
		Data: append([]byte(nil), payload[:len(payload)-FooterTailLen]...)}, nil
}

// DecodeFrames walks the frames in b, which holds the bytes starting at
// position pos of the file whose header is hdr; the first frame must hold
// offset next. It verifies each frame (header limits, checksum, record
// table, offset contiguity) before calling fn, which may stop the walk by
// returning false; Frame.Payload aliases b. It stops without error at an
// all-zero header or where b ends inside a frame, and returns the position
// and offset where it stopped. Any invalid frame is an error naming its
// position; callers that know the bytes were acknowledged report it as
// corruption.
func DecodeFrames(b []byte, hdr FileHeader, pos int64, next uint64, fn func(Frame) bool) (end int64, nextOffset uint64, err error) {
	p := 0
	for len(b)-p >= FrameHeaderLen {
		h, err := DecodeFrameHeader(b[p:], int(hdr.MaxWrite))
		if errors.Is(err, errZeroHeader) {
			break
		}
		if err != nil {
			return pos + int64(p), next, fmt.Errorf("frame at %d: %w", pos+int64(p), err)
		}
		size := FrameSize(int(h.Length))
		if h.Type == FrameFooter || len(b)-p < size {
			break
		}
		payload := b[p+FrameHeaderLen : p+FrameHeaderLen+int(h.Length)]
		if err := VerifyFrame(h, hdr.SegmentID, pos+int64(p), payload); err != nil {
			return pos + int64(p), next, fmt.Errorf("frame at %d: %w", pos+int64(p), err)
		}
		if h.First != next {
			return pos + int64(p), next, fmt.Errorf("frame at %d holds offsets from %d, expected %d", pos+int64(p), h.First, next)
		}
		f := Frame{Pos: pos + int64(p), Size: size, First: h.First, Count: int(h.Count), Time: h.Timestamp, Checksum: h.checksum, Payload: payload}
		p += size
		next += uint64(h.Count)
		if !fn(f) {
			break
		}
	}
	return pos + int64(p), next, nil
}
