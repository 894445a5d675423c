package wal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

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
	// Checksum is the footer frame's CRC-32C, as stored: it covers the
	// whole footer, so it identifies it.
	Checksum uint32
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

	highWater int64        // the file's high-water mark (0: none)
	readAll   bool         // see ReadAll
	bytesRead atomic.Int64 // device bytes read (lastNonZero reads in parallel)
}

// ReadAll makes the scanner ignore the file's high-water mark: the proof
// that nothing follows the frames reads the whole rest of the file, so
// that stray data past the mark (damage in space no write reached) is
// found too. Verification calls it; recovery does not need it. Call it
// before Next.
func (s *Scanner) ReadAll() { s.readAll = true }

// proofEnd is where the bytes the proof of a clean or torn end must read
// end: the file's high-water mark (the writer never wrote past it, so
// everything from there on is as preallocation left it: zeros), or the end
// of the file.
func (s *Scanner) proofEnd() int64 {
	if s.highWater > 0 && !s.readAll {
		return min(s.size, s.highWater)
	}
	return s.size
}

// HighWater returns the file's high-water mark, 0 if it has none.
func (s *Scanner) HighWater() int64 { return s.highWater }

// BytesRead returns the device bytes the scanner has read so far.
func (s *Scanner) BytesRead() int64 { return s.bytesRead.Load() }

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

// Settle makes a Continue scan judge what it finds where no valid frame is
// as a scan from the file's start does (a torn tail, or corruption),
// instead of stopping without a verdict: for a file that no writer has
// open, or whose writer has moved on from it, so that nothing there can
// be a write in flight. It reads the
// file's high-water mark, which bounds what that judgement reads. Call it
// before Next.
func (s *Scanner) Settle() error {
	b, err := s.fetch(0, DataStart)
	if err != nil {
		return err
	}
	if err := s.readHeaderBlock(b); err != nil {
		return err
	}
	s.live = false
	return nil
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
		return nil, &CorruptionError{File: dev.Name(), Position: 0, Reason: "file header", Err: err}
	}
	if err := s.readHeaderBlock(b); err != nil {
		return nil, err
	}
	s.nextOffset = s.hdr.BaseOffset
	s.readAhead = scanChunk // from here on the scanner reads sequentially
	return s, nil
}

// readHeaderBlock checks the header block b after the file header: zeros,
// but for the high-water mark, which it decodes.
func (s *Scanner) readHeaderBlock(b []byte) error {
	padding := func(from, to int) error {
		if from >= min(to, len(b)) {
			return nil
		}
		if i := lastNonZeroIn(b[from:min(to, len(b))]); i > 0 {
			return &CorruptionError{File: s.dev.Name(), Segment: s.hdr.BaseOffset, Position: int64(from + i - 1),
				Reason: "non-zero byte in the header block's padding (it is written as zeros)"}
		}
		return nil
	}
	if err := padding(FileHeaderLen, HighWaterPos); err != nil {
		return err
	}
	if err := padding(HighWaterPos+HighWaterLen, DataStart); err != nil {
		return err
	}
	if len(b) < HighWaterPos+HighWaterLen {
		return padding(HighWaterPos, HighWaterPos+HighWaterLen)
	}
	hw, err := decodeHighWater(b[HighWaterPos:], s.hdr.SegmentID)
	if err != nil {
		// A writer in another process may be rewriting the mark as this
		// read ran (a buffered device copies it in pieces): read it once
		// more. A crash cannot leave it damaged: it lies in one sector.
		s.winStart, s.winEnd = 0, 0
		again, rerr := s.fetch(HighWaterPos, HighWaterLen)
		if rerr != nil {
			return rerr
		}
		if len(again) < HighWaterLen {
			return &CorruptionError{File: s.dev.Name(), Segment: s.hdr.BaseOffset, Position: HighWaterPos, Reason: "high-water mark", Err: err}
		}
		if hw, err = decodeHighWater(again, s.hdr.SegmentID); err != nil {
			return &CorruptionError{File: s.dev.Name(), Segment: s.hdr.BaseOffset, Position: HighWaterPos,
				Reason: "damaged high-water mark in the header block (a crash leaves it whole: it lies in one sector)", Err: err}
		}
	}
	if s.hdr.HasHighWater() {
		// Only a file of a version that has marks may take one as a bound:
		// an older file's mark (written by a build that marked files of
		// its version) is valid bytes, not a bound recovery relies on.
		s.highWater = hw
	}
	return nil
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
		return false, s.stop(p, errShortHeader)
	}
	h, err := DecodeFrameHeader(b, limit)
	if err != nil {
		return false, s.stop(p, err)
	}
	size := FrameSize(int(h.Length))
	if p+int64(size) > s.size {
		return false, s.stop(p, fmt.Errorf("frame of %d bytes runs past the end of the file (%d)", size, s.size))
	}
	b, err = s.fetch(p, size)
	if err != nil {
		return false, err
	}
	payload := b[FrameHeaderLen : FrameHeaderLen+int(h.Length)]
	if err := VerifyFrame(h, s.hdr, p, payload); err != nil {
		return false, s.stop(p, err)
	}
	if !isZero(b[FrameHeaderLen+int(h.Length) : size]) {
		return false, s.corrupt(p, fmt.Sprintf("non-zero padding after the frame's %d payload bytes", h.Length), nil)
	}
	if h.First != s.nextOffset {
		// A valid frame cannot come from a tear: this is a frame out of place.
		return false, s.corrupt(p, fmt.Sprintf("frame holds offsets from %d, expected %d", h.First, s.nextOffset), nil)
	}
	if h.Type == FrameFooter {
		s.footer = &Footer{Pos: p, End: p + int64(size), Next: h.First, Time: h.Timestamp, Checksum: h.checksum,
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
// there is not valid (why says how). Nothing read from the damaged frame's
// header decides it alone: its length may be the damaged part.
//
// The writer's model: the device writes sectors atomically but in any
// order; the writer never has more than MaxWrite unwritten-or-unsynced bytes
// past the durable end D, whose old content is zeros; each frame's durable
// mark says where D was when the frame was made; a seal makes the records
// durable before it writes the footer. A crash leaves the frames before D
// intact, so p >= D, and leaves every sector of the last writes either
// written or still zero. So damage is a torn tail only if it lies at or
// after the end a clean close recorded, all data from p on ends within
// MaxWrite of p, and tornAt finds the mark of a tear and nothing that
// rules one out. ARCHITECTURE.md (Recovery) has the rule as a table, and
// what it cannot tell apart: damage to the last acknowledged flushes, which
// nothing written later vouches for, that looks like unwritten sectors.
func (s *Scanner) stop(p int64, why error) error {
	if s.live {
		return nil // not written yet, or being written
	}
	if p == s.trustEnd && errors.Is(why, errZeroHeader) {
		return nil // a clean close said nothing follows
	}
	if p < s.trustEnd {
		return s.corrupt(p, fmt.Sprintf("%v, before %d, where the frames ended when the file was closed cleanly: no write was in flight there", why, s.trustEnd), nil)
	}
	nz, err := s.lastNonZero(p)
	if err != nil {
		return err
	}
	if nz <= p {
		return nil // zeros (or nothing) from p on: the clean end
	}
	window := int64(s.hdr.MaxWrite)
	if nz-p > window {
		return s.corrupt(p, fmt.Sprintf("%v, and %d bytes of data follow, more than the %d a torn write can leave", why, nz-p, window), nil)
	}
	sealed, isSealed := s.tailNames() // before b is fetched: a fetch reuses the window b aliases
	if !isSealed || s.hdr.Version < 2 {
		sealed = -1
	}
	// The damaged region, and room for a valid frame that starts in it and
	// ends in zeros (its padding, or records that end in zero bytes).
	n := min(s.size, nz+window) - p
	b, err := s.fetch(p, int(n))
	if err != nil {
		return err
	}
	if int64(len(b)) < n {
		return fmt.Errorf("wal: read %s at %d: %d bytes, want %d", s.dev.Name(), p, len(b), n)
	}
	verdict := s.tornAt(p, b, int(nz-p), sealed)
	if verdict == "" {
		s.torn = &TornTail{Pos: p, Bytes: nz - p, Reason: why.Error()}
		return nil
	}
	return s.corrupt(p, verdict, why)
}

// tornAt applies stop's rule to b, the file bytes from p on, whose last
// non-zero byte is b[data-1]; sealed is the footer position the file's
// tail names (-1 if none, or in a version 1 file). It returns "" for a torn
// tail, or why the damage is corruption. In order: a later valid frame
// whose mark lies past p, or a footer after p, rules a tear out; then the
// mark of a tear (a lost sector at p or within the header, unless a single
// flipped bit explains the damage; a whole zero sector; records that run
// past the data). It must not fetch: b aliases the scanner's window.
func (s *Scanner) tornAt(p int64, b []byte, data int, sealed int64) string {
	next, proof, err := s.validFrameAfter(p, b, data)
	if err != nil {
		return err.Error()
	}
	if proof != nil {
		return fmt.Sprintf("the valid frame at %d follows, made when the file was durable %s: the damage is in acknowledged data", proof.pos, proof.what)
	}
	// A seal makes the records durable before it writes the footer, so in
	// a file whose last bytes are a footer tail only the footer can be torn.
	if p < sealed {
		return fmt.Sprintf("the file was sealed (its last bytes name a footer at %d), and a seal writes its footer only once the records before it are durable", sealed)
	}
	// Where the evidence of a tear must lie: before the next valid frame, or
	// within the data. written is the end of the last sector holding data:
	// the sectors after it read as zeros.
	bound := data
	if next >= 0 {
		bound = int(next - p)
	}
	written := min(int(alignedbuf.AlignUp(p+int64(data), blockdev.SectorSize)-p), len(b))
	// The sector holding p is zero from p on: the frame's first bytes, its
	// type among them, never reached the device.
	if isZero(b[:min(data, int(alignedbuf.AlignUp(p+1, blockdev.SectorSize)-p))]) {
		return ""
	}
	// The header runs past the end of the file, or into the zero sectors
	// after the data: the write that held its end did not land.
	if p+FrameHeaderLen > s.size || FrameHeaderLen > written {
		return ""
	}
	if s.oneBitExplains(p, b) {
		return "damaged frame that a single flipped bit explains: a crash cannot"
	}
	// A whole zero sector where the writer wrote data.
	for sec := int(alignedbuf.AlignUp(p, blockdev.SectorSize) - p); sec+blockdev.SectorSize <= bound; sec += blockdev.SectorSize {
		if isZero(b[sec : sec+blockdev.SectorSize]) {
			return ""
		}
	}
	if next >= 0 {
		return fmt.Sprintf("damaged frame before the valid frame at %d, with every sector written: a crash cannot explain it", next)
	}
	// The frame runs on past the data into zeros (or past the end of the
	// file): its last sectors were not written. Its records say so, walked
	// by their own length prefixes as far as the data goes, and its header
	// agrees; the header's length alone decides nothing.
	h, err := DecodeFrameHeader(b, int(s.hdr.MaxWrite))
	if err != nil {
		return "damaged frame with every sector written: a crash cannot explain it"
	}
	runsPast := func() bool {
		end := p + int64(FrameSize(int(h.Length)))
		return end > p+int64(written) || end > s.size
	}
	if h.Type == FrameRecords && recordsRunPast(b, written, s.hdr.RecordHeaderLen()) && runsPast() {
		return ""
	}
	// A footer's payload may hold whole zero sectors (an index of small
	// numbers), so a seal torn after them leaves no zero sector inside the
	// data; but a footer ends in its tail, whose magic is never zero. A
	// header that is a footer's, made once every record before it was
	// durable (mark 1, as Seal makes it; in a version 1 file, whose frames
	// carry no mark, 0), whose tail lies in the zeros after the data, is
	// the mark of a torn seal. Cutting it loses no record: they are all
	// before p.
	sealMark := uint32(1)
	if s.hdr.Version < 2 {
		sealMark = 0
	}
	if h.Type == FrameFooter && h.mark == sealMark && runsPast() {
		return ""
	}
	return "damaged frame with every sector written: a crash cannot explain it"
}

// recordsRunPast reports whether the records of the frame at the start of b,
// walked by their length prefixes (in record headers of hl bytes) for the
// count its header gives, need bytes at or past written (where only zeros
// were read): the frame did not end within the data.
func recordsRunPast(b []byte, written, hl int) bool {
	count := int(binary.LittleEndian.Uint32(b[12:16]))
	at := FrameHeaderLen
	for i := 0; i < count; i++ {
		if at+hl > written {
			return true
		}
		at += hl + int(binary.LittleEndian.Uint32(b[at:]))
		if at > written {
			return true
		}
	}
	return false
}

// frameProof is a valid frame that proves damage before it was durable.
type frameProof struct {
	pos  int64
	what string
}

// candidateBudget bounds, in multiples of MaxWrite, the bytes validFrameAfter
// checksums for candidates that then fail: a file crafted to hold a
// plausible header at every position would otherwise cost MaxWrite bytes of
// checksum per position.
const candidateBudget = 16

// validFrameAfter looks for valid frames at every FrameAlign position of b
// (the file bytes from p on) after p and before data. It returns the
// position of the first (-1 if none), and the first that proves the frame
// at p was durable before it was made: its durable mark lies past p. (A
// frame without a mark, as in version 1 files, proves nothing.) A valid
// frame is skipped whole. A candidate must fit what can follow the frame at
// p: offsets after the next expected one, no more records than bytes allow,
// a time no earlier than the last frame's.
func (s *Scanner) validFrameAfter(p int64, b []byte, data int) (next int64, proof *frameProof, err error) {
	next = -1
	budget := candidateBudget * int64(s.hdr.MaxWrite)
	expect := s.nextOffset
	for i := FrameAlign; i < data && i+FrameHeaderLen <= len(b); {
		h, err := DecodeFrameHeader(b[i:], int(s.hdr.MaxWrite))
		end := i + FrameHeaderLen + int(h.Length)
		pos := p + int64(i)
		minFirst := expect // after a valid frame: contiguous, or later
		if next < 0 {
			minFirst++ // the damaged frame holds at least one record
		}
		if err != nil || end > len(b) || h.First < minFirst || h.First > expect+uint64(i/s.hdr.RecordHeaderLen()) || h.Timestamp < s.lastTime {
			i += FrameAlign
			continue
		}
		if VerifyFrame(h, s.hdr, pos, b[i+FrameHeaderLen:end]) != nil {
			if budget -= int64(h.Length); budget < 0 {
				return next, nil, fmt.Errorf("more plausible frame headers after the damage than a torn write leaves (hostile or badly damaged data)")
			}
			i += FrameAlign
			continue
		}
		if next < 0 {
			next = pos
		}
		if d, ok := h.DurableBefore(pos); ok && d > p {
			return next, &frameProof{pos, fmt.Sprintf("to %d, past the damaged frame at %d", d, p)}, nil
		}
		expect = h.First + uint64(h.Count)
		i += FrameSize(int(h.Length))
	}
	return next, nil, nil
}

// oneBitExplains reports whether a single flipped bit turns the frame at
// the start of b (the file bytes from p on) into a valid one: damage that a
// crash cannot make, since a torn write leaves whole sectors old or new. A
// flip of the length field changes what the checksum covers, so each of its
// 32 bits is tried; a flip anywhere else (checksum, header, payload) is
// found from the checksum's syndrome in one pass (singleBitFlip).
//
// A torn frame whose lost sectors happen to give the syndrome of a single
// flip is taken for one: with n payload bytes that chance is about 8n/2^32
// (one in 2^19 for 1 KiB, one in 128 for 4 MiB), and the error errs toward
// keeping acknowledged data: the open refuses and names the position.
func (s *Scanner) oneBitExplains(p int64, b []byte) bool {
	if len(b) < FrameHeaderLen {
		return false
	}
	limit := int64(min(int(s.hdr.MaxWrite), MaxFramePayload))
	want := binary.LittleEndian.Uint32(b[0:4])
	length := binary.LittleEndian.Uint32(b[8:12])
	if end := FrameHeaderLen + int64(length); int64(length) <= limit && end <= int64(len(b)) {
		// A flip found in a sector that reads all zero is a lost sector
		// that held one set bit, which a tear does leave.
		if at, _, ok := singleBitFlip(s.hdr.SegmentID, p, b[4:FrameHeaderLen], b[FrameHeaderLen:end], want); ok {
			sec := int(alignedbuf.AlignDown(p+int64(at), blockdev.SectorSize) - p)
			if !isZero(b[max(sec, 0):min(sec+blockdev.SectorSize, len(b))]) {
				return true
			}
		}
	}
	var hdr [FrameHeaderLen]byte
	for bit := 0; bit < 32; bit++ {
		copy(hdr[:], b)
		l := length ^ 1<<bit
		if end := FrameHeaderLen + int64(l); int64(l) > limit || end > int64(len(b)) {
			continue
		}
		binary.LittleEndian.PutUint32(hdr[8:12], l)
		if frameChecksum(s.hdr.SegmentID, p, hdr[4:], b[FrameHeaderLen:FrameHeaderLen+int(l)]) == want {
			return true
		}
	}
	return false
}

func (s *Scanner) corrupt(p int64, reason string, err error) error {
	ce := &CorruptionError{File: s.dev.Name(), Segment: s.hdr.BaseOffset, Position: p, Reason: reason, Err: err}
	// Say whether the damaged frame is the footer: a caller can then
	// rebuild the footer from the records, which are all intact. Its type
	// byte alone could be the damage: the file's last 16 bytes must be a
	// footer tail that names this frame.
	if b, ferr := s.fetch(p, FrameHeaderLen); ferr == nil && len(b) == FrameHeaderLen && b[4] == FrameFooter {
		f, ok := s.tailNames()
		ce.InFooter = ok && f == p
	}
	return ce
}

// tailNames returns the footer position that the file's last 16 bytes name,
// if they are a footer tail.
func (s *Scanner) tailNames() (int64, bool) {
	if s.size < DataStart+FrameHeaderLen+FooterTailLen {
		return 0, false
	}
	t, err := s.fetch(s.size-FooterTailLen, FooterTailLen)
	if err != nil || len(t) < FooterTailLen || string(t[8:]) != FooterMagic {
		return 0, false
	}
	f := int64(binary.LittleEndian.Uint64(t))
	return f, f >= DataStart && f%FrameAlign == 0 && f <= s.size-FrameHeaderLen-FooterTailLen
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
	end := s.proofEnd()
	for at := q; at < end; at += scanChunk {
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
			buf := a.Alloc(int(min(scanChunk, alignedbuf.AlignUp(end-pc.at, int64(a.Offset)))))
			n, err := s.dev.ReadAt(buf, pc.at)
			s.bytesRead.Add(int64(n))
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
	// Read ahead, but not past the end of the file, nor past the
	// high-water mark (no frame lies there).
	length = max(length, min(s.readAhead, alignedbuf.AlignUp(s.proofEnd(), int64(a.Offset))-start))
	if int64(len(s.win)) < length {
		s.win = a.Alloc(int(length))
	}
	m, err := s.dev.ReadAt(s.win[:length], start)
	s.bytesRead.Add(int64(m))
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
	// HighWater is the file's high-water mark (0: none): the proof of the
	// end read no further.
	HighWater int64
	BytesRead int64 // device bytes the scan read
}

// Recovery summarizes the scan; it is complete once Next has returned
// false with a nil Err.
func (s *Scanner) Recovery() *Recovery {
	return &Recovery{Header: s.hdr, End: s.pos, NextOffset: s.nextOffset, Frames: s.frames, Records: s.records,
		LastTime: s.lastTime, Torn: s.torn, Footer: s.footer, HighWater: s.highWater, BytesRead: s.BytesRead()}
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
// and verified (checksum, position, type). It returns ErrNoFooter when the
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
		return s.hdr, nil, fmt.Errorf("%s: %w (size %d)", dev.Name(), ErrNoFooter, size)
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
		return s.hdr, nil, fmt.Errorf("%s: %w", dev.Name(), ErrNoFooter)
	}
	pos := int64(binary.LittleEndian.Uint64(tail))
	footerErr := func(reason string, err error) error {
		return &CorruptionError{File: dev.Name(), Segment: s.hdr.BaseOffset, Position: pos, Reason: reason, Err: err, InFooter: true}
	}
	if pos < DataStart || pos%FrameAlign != 0 || pos > size-FrameHeaderLen-FooterTailLen {
		return s.hdr, nil, footerErr(fmt.Sprintf("footer tail names impossible position %d in a file of %d bytes", pos, size), nil)
	}
	if size-pos > int64(s.hdr.MaxWrite) { // a writer's footer is one write: it is never read whole past that
		return s.hdr, nil, footerErr(fmt.Sprintf("footer of %d bytes (from %d) is larger than the header's max write %d", size-pos, pos, s.hdr.MaxWrite), nil)
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
	if err := VerifyFrame(h, s.hdr, pos, payload); err != nil {
		return s.hdr, nil, footerErr("footer", err)
	}
	return s.hdr, &Footer{Pos: pos, End: size, Next: h.First, Time: h.Timestamp, Checksum: h.checksum,
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
		if err := VerifyFrame(h, hdr, pos+int64(p), payload); err != nil {
			return pos + int64(p), next, fmt.Errorf("frame at %d: %w", pos+int64(p), err)
		}
		if !isZero(b[p+FrameHeaderLen+int(h.Length) : p+size]) {
			return pos + int64(p), next, fmt.Errorf("frame at %d: non-zero padding after its %d payload bytes", pos+int64(p), h.Length)
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
