// Package wal is the record layer of one segment file: the frame format, a
// group-commit writer over a blockdev.Device, and a scanner that recovers a
// torn tail and reports corruption.
//
// A file is a header block followed by frames. Each frame carries a batch of
// records with consecutive offsets; its checksum covers the file's identity
// and the frame's own position, so a frame read from the wrong place or the
// wrong file is detected. Zero bytes are never a valid header: the zeroed,
// preallocated rest of a file is the clean end of the log.
package wal

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// File header, at position 0, little endian:
//
//	0       8       12      16              24              32              40      44              60      64
//	+-------+-------+-------+---------------+---------------+---------------+-------+---------------+-------+
//	| magic |version| flags |  segment id   |  base offset  | created (ns)  |maxWrite  reserved (0) | crc32c|
//	+-------+-------+-------+---------------+---------------+---------------+-------+---------------+-------+
//
// The header region is DataStart bytes long and zero after the header;
// frames start at DataStart.
const (
	// Magic identifies a segstore wal file.
	Magic = "segstore"
	// Version is the format version this package writes. A file with a
	// larger version is refused with ErrVersion. Version 2 added the durable
	// mark of each frame (see the frame diagram); version 3 gave each record
	// its own checksum (see the record diagram), so that one record can be
	// read and verified without its frame; version 4 added the high-water
	// mark at HighWaterPos (see its diagram), which bounds how much of the
	// file recovery reads. Files of versions 1 to 3 are still read, and
	// appended to in their own version: without a mark.
	Version = 4
	// HighWaterVersion is the first version whose files carry a high-water
	// mark. In an older file the mark's bytes are zero (a build of that
	// version refuses anything else as damage), so a writer never marks one
	// and recovery reads it to its end.
	HighWaterVersion = 4
	// MinVersion is the oldest format version this package reads.
	MinVersion = 1
	// FileHeaderLen is the encoded size of the file header.
	FileHeaderLen = 64
	// DataStart is where the first frame begins. 4096 is the largest block
	// size common devices and filesystems use, so on them the header block is
	// never rewritten by appends; on a device with larger blocks the writer
	// rewrites it with identical bytes, which is safe.
	DataStart = 4096
)

// Frame, at a position that is a multiple of FrameAlign, little endian:
//
//	0       4    5             8        12       16              24              32
//	+-------+----+-------------+--------+--------+---------------+---------------+------------ - -
//	| crc32c|type| durable mark| length | count  | first offset  | timestamp(ns) | payload (length bytes),
//	+-------+----+-------------+--------+--------+---------------+---------------+------------ - -
//	                                                                then zero padding to FrameAlign
//
// payload = count records, each a record header and its bytes (see the
// record diagram). crc32c (Castagnoli) covers, in order: the segment id (8 bytes LE), the
// frame's position in the file (8 bytes LE), header bytes [4:32] and the
// payload. The padding is not covered: it must be zero.
//
// The durable mark (24 bits) says how far the file was durable when the
// writer made the frame: the frame at position pos was made when every
// byte before pos - (mark-1)*MarkUnit had been fdatasynced (a lower bound).
// Zero means the frame does not say: every frame of a version 1 file (a
// writer never reserves a frame more than 256 MiB past its durable end). Recovery uses
// it to tell a torn write from damage to acknowledged data: a valid frame
// whose mark lies past a damaged frame proves that the damaged frame had
// been made durable before, so no crash can explain its damage.
const (
	FrameHeaderLen = 32
	// FrameAlign: frames start on 8-byte boundaries, so a header never
	// straddles a sector boundary that a torn write could split unevenly
	// within its first 8 bytes, and scanners can skip impossible positions.
	FrameAlign = 8
	// MaxFramePayload bounds every length read from disk before allocation.
	MaxFramePayload = 64 << 20
	// MaxRecordSize is the largest record: one record per maximal frame.
	MaxRecordSize = MaxFramePayload - RecordHeaderLen
)

// Record, inside a frame's payload, at any byte position (records are
// packed; only frames are aligned), little endian; version 3:
//
//	0        4        8
//	+--------+--------+---------------- - -
//	| length | crc32c | record (length bytes)
//	+--------+--------+---------------- - -
//
// crc32c (Castagnoli) covers, in order: the segment id (8 bytes LE), the
// record's offset (8 bytes LE), the record's position in the file (8 bytes
// LE: where its length field is), the length field and the record bytes.
// So a record read from another file, another place or found by a walk
// that went wrong (a damaged length before it) fails its check, and a
// reader that found a record through an index can verify it alone, without
// reading the rest of its frame. The frame's checksum still covers every
// byte of the payload, these headers included: recovery does not depend on
// the record checksums.
//
// Versions 1 and 2: the length alone (4 bytes, then the record); only the
// frame's checksum covers the record. The length comes first in every
// version, so a walk that only skips records reads it at the same place.
const (
	// RecordHeaderLen is the record header of the current version.
	RecordHeaderLen = 8
	// recordHeaderLenV2 is the record header of versions 1 and 2.
	recordHeaderLenV2 = 4
	// minRecordHeaderLen is the smallest record header of any version: a
	// frame's count is checked against its length with it before the
	// version is known.
	minRecordHeaderLen = recordHeaderLenV2
)

// RecordHeaderSize is the record header length in a file of version v.
func RecordHeaderSize(v uint32) int {
	if v >= 3 {
		return RecordHeaderLen
	}
	return recordHeaderLenV2
}

// RecordHeaderLen is the record header length of the file.
func (h FileHeader) RecordHeaderLen() int { return RecordHeaderSize(h.Version) }

// HasHighWater reports whether the file's version carries a high-water
// mark (version HighWaterVersion and later).
func (h FileHeader) HasHighWater() bool { return h.Version >= HighWaterVersion }

// RecordChecksum is the checksum a version 3 record header carries for rec,
// the record at offset off whose header is at position pos in the file with
// identity segID.
func RecordChecksum(segID, off uint64, pos int64, rec []byte) uint32 {
	// The 28 bytes before the record, byte by byte from the table: a
	// buffer for them handed to crc32.Update escapes to the heap, an
	// allocation per record (a quarter of the encoding time, measured).
	crc := ^uint32(0)
	for _, v := range [...]uint64{segID, off, uint64(pos)} {
		for i := range 8 {
			crc = castagnoli[byte(crc)^byte(v>>(8*i))] ^ crc>>8
		}
	}
	for i := range 4 {
		crc = castagnoli[byte(crc)^byte(len(rec)>>(8*i))] ^ crc>>8
	}
	return crc32.Update(^crc, castagnoli, rec)
}

// DecodeRecordHeader returns the length and checksum of the version 3
// record header at the start of b (at least RecordHeaderLen bytes). Neither
// is checked: the length must be bounded by what the caller holds before
// it is used, and the checksum is checked by VerifyRecord.
func DecodeRecordHeader(b []byte) (length int, crc uint32) {
	_ = b[RecordHeaderLen-1]
	return int(binary.LittleEndian.Uint32(b[0:4])), binary.LittleEndian.Uint32(b[4:8])
}

// VerifyRecord checks rec, found behind a version 3 record header holding
// crc at position pos, as the record at offset off of the file with
// identity segID.
func VerifyRecord(segID, off uint64, pos int64, crc uint32, rec []byte) error {
	if got := RecordChecksum(segID, off, pos, rec); got != crc {
		return fmt.Errorf("record %d at byte %d (%d bytes): checksum %#08x, want %#08x (damaged, or not the record at this offset and place)", off, pos, len(rec), got, crc)
	}
	return nil
}

// FrameType values; zero is never valid (an all-zero header is the clean
// end of a file).
const (
	// FrameRecords holds count >= 1 records.
	FrameRecords = 1
	// FrameFooter seals a file: it is the last frame, count is 0, first
	// offset is the offset after the file's last record, and the payload is
	// the caller's footer bytes followed by FooterTailLen bytes:
	//
	//	 0                8                16
	//	 +----------------+----------------+
	//	 | footer position| "segfootr"     |
	//	 +----------------+----------------+
	//
	// The file ends exactly at the end of this frame (it is a multiple of 8
	// and the tail is its last 16 bytes), so a reader finds the footer from
	// the file size alone; the checksum covers the tail.
	FrameFooter = 2
	// FooterTailLen is the fixed tail of a footer payload.
	FooterTailLen = 16
	// FooterMagic ends every sealed file.
	FooterMagic = "segfootr"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors. Decoding errors other than these are *CorruptionError values.
var (
	// ErrCorrupt matches every *CorruptionError.
	ErrCorrupt = errors.New("wal: corrupt data")
	// ErrNotWAL: the file does not start with a segstore header.
	ErrNotWAL = errors.New("wal: not a segstore wal file")
	// ErrVersion: the file was written by a newer format version.
	ErrVersion = errors.New("wal: unsupported format version")
	// ErrRecordTooLarge / ErrBatchTooLarge: an Append exceeds the limits.
	ErrRecordTooLarge = errors.New("wal: record too large")
	ErrBatchTooLarge  = errors.New("wal: batch too large for one frame")
	// ErrEmptyBatch: Append was called without records.
	ErrEmptyBatch = errors.New("wal: empty batch")
	// ErrSealed: Open was given a sealed file; sealed files are read-only.
	ErrSealed = errors.New("wal: file is sealed (read-only)")
	// ErrNoFooter: ReadSealed found no footer tail at the end of the file
	// (a file not sealed yet, or one whose seal a crash cut).
	ErrNoFooter = errors.New("wal: no footer at the end of the file")
	// ErrClosed: the writer was closed.
	ErrClosed = errors.New("wal: writer closed")
	// ErrFailed wraps the first write or sync error; the writer refuses
	// every later write with it (fsync is never retried).
	ErrFailed = errors.New("wal: writer failed earlier; nothing after the last successful sync is known to be durable; reopen the file to recover")
)

// CorruptionError reports damage in a wal file: what, where, and the cause.
type CorruptionError struct {
	File     string // device name (path)
	Segment  uint64 // base offset of the file, if known
	Position int64  // byte position of the damaged frame or header
	Reason   string
	Err      error // underlying cause, may be nil
	// InFooter: the damaged frame's header claims to be the footer of a
	// sealed file; every record frame before Pos is intact.
	InFooter bool
}

func (e *CorruptionError) Error() string {
	return fmt.Sprintf("wal: corruption in %s (segment %d) at byte %d: %s (data before this position is intact; the file was not modified: inspect it and repair explicitly)", e.File, e.Segment, e.Position, e.Detail())
}

// Detail is what is wrong, without the file, the position or the advice
// Error adds: for an error that reports those itself and wraps this one.
func (e *CorruptionError) Detail() string {
	if e.Err != nil {
		return e.Reason + ": " + e.Err.Error()
	}
	return e.Reason
}

func (e *CorruptionError) Unwrap() []error {
	if e.Err != nil {
		return []error{ErrCorrupt, e.Err}
	}
	return []error{ErrCorrupt}
}

// FileHeader is the decoded file header.
type FileHeader struct {
	// Version is the format version the file was created with (EncodeFileHeader
	// always writes Version).
	Version    uint32
	SegmentID  uint64 // random identity, mixed into every frame checksum
	BaseOffset uint64 // offset of the file's first record
	Created    int64  // unix nanoseconds
	// MaxWrite is the largest single write the writer issues, in bytes, and
	// so the most data a crash can leave torn past the last synced frame.
	MaxWrite uint32
}

// EncodeFileHeader writes h into b[:FileHeaderLen].
func EncodeFileHeader(b []byte, h FileHeader) {
	_ = b[FileHeaderLen-1]
	clear(b[:FileHeaderLen])
	copy(b[0:8], Magic)
	binary.LittleEndian.PutUint32(b[8:12], cmp.Or(h.Version, Version))
	binary.LittleEndian.PutUint64(b[16:24], h.SegmentID)
	binary.LittleEndian.PutUint64(b[24:32], h.BaseOffset)
	binary.LittleEndian.PutUint64(b[32:40], uint64(h.Created))
	binary.LittleEndian.PutUint32(b[40:44], h.MaxWrite)
	binary.LittleEndian.PutUint32(b[60:64], crc32.Checksum(b[:60], castagnoli))
}

// DecodeFileHeader parses and checks a file header.
func DecodeFileHeader(b []byte) (FileHeader, error) {
	if len(b) < FileHeaderLen {
		return FileHeader{}, fmt.Errorf("%w: header is %d bytes, need %d", ErrNotWAL, len(b), FileHeaderLen)
	}
	if string(b[0:8]) != Magic {
		return FileHeader{}, fmt.Errorf("%w: magic %q", ErrNotWAL, b[0:8])
	}
	// The checksum before the version: a damaged version is damage, not a
	// file from another release. (Every version keeps the magic, the
	// version and this checksum where they are.)
	if got, want := crc32.Checksum(b[:60], castagnoli), binary.LittleEndian.Uint32(b[60:64]); got != want {
		return FileHeader{}, fmt.Errorf("header checksum %#x, want %#x", got, want)
	}
	v := binary.LittleEndian.Uint32(b[8:12])
	if v > Version {
		return FileHeader{}, fmt.Errorf("%w: file has version %d, this build reads %d to %d: upgrade segstore to a build that reads format version %d (the file is left as it is)", ErrVersion, v, MinVersion, Version, v)
	}
	if v < MinVersion {
		return FileHeader{}, fmt.Errorf("%w: version %d", ErrNotWAL, v)
	}
	h := FileHeader{
		Version:    v,
		SegmentID:  binary.LittleEndian.Uint64(b[16:24]),
		BaseOffset: binary.LittleEndian.Uint64(b[24:32]),
		Created:    int64(binary.LittleEndian.Uint64(b[32:40])),
		MaxWrite:   binary.LittleEndian.Uint32(b[40:44]),
	}
	if h.MaxWrite < 4*512 || h.MaxWrite > MaxFramePayload || h.MaxWrite%512 != 0 {
		return FileHeader{}, fmt.Errorf("header max write %d is implausible (a writer uses a multiple of 512 from 2 KiB to %d)", h.MaxWrite, MaxFramePayload)
	}
	return h, nil
}

// FrameHeader is the decoded fixed part of a frame.
type FrameHeader struct {
	Type       uint8
	Length     uint32 // payload bytes
	Count      uint32 // records
	First      uint64 // offset of the first record
	Timestamp  int64  // unix nanoseconds, set by the writer
	mark       uint32 // the durable mark, 0 if none (see DurableBefore)
	checksum   uint32
	headerTail [FrameHeaderLen - 4]byte
}

// DurableBefore returns the position before which the file was durable
// when the frame at pos was made, as its durable mark says, and false if
// the frame carries no mark.
func (h FrameHeader) DurableBefore(pos int64) (int64, bool) {
	if h.mark == 0 {
		return 0, false
	}
	return pos - int64(h.mark-1)*MarkUnit, true
}

const (
	// MarkUnit is the unit of a durable mark: 16 bytes, so a mark reaches
	// 256 MiB back (more than the 192 MiB a writer with the largest
	// MaxWrite can have reserved past its durable end: two buffers and an
	// unsynced write), and errs low by less than the smallest frame (40
	// bytes), so it always lies past a frame that was durable.
	MarkUnit = 16
	// maxMark is the largest durable mark (24 bits).
	maxMark = 1<<24 - 1
)

// durableMark encodes durable, the position before which the file is
// durable (at most pos; negative: unknown), as the mark of a frame at pos.
func durableMark(pos, durable int64) uint32 {
	back := (pos - durable + MarkUnit - 1) / MarkUnit // rounded up: the mark may only err low
	if durable < 0 || back < 0 || back >= maxMark {
		return 0
	}
	return uint32(back) + 1
}

// FrameSize is the number of bytes a frame with a payload of n bytes
// occupies, padding included.
func FrameSize(payload int) int { return alignUp(FrameHeaderLen+payload, FrameAlign) }

// PayloadSize is the payload length of a batch of records in the current
// version.
func PayloadSize(records [][]byte) int { return payloadSize(RecordHeaderLen, records) }

// PayloadSize is the payload length of a batch of records in the file's
// version.
func (h FileHeader) PayloadSize(records [][]byte) int {
	return payloadSize(h.RecordHeaderLen(), records)
}

func payloadSize(hl int, records [][]byte) int {
	n := 0
	for _, r := range records {
		n += hl + len(r)
	}
	return n
}

// EncodeFrame writes a frame of the current version holding records into
// b, which must have at least FrameSize(PayloadSize(records)) bytes, and
// returns the bytes used. pos is the frame's position in the file with
// identity segID; durable is the position before which the file is known
// durable (its durable mark; negative for none).
func EncodeFrame(b []byte, segID uint64, pos, durable int64, first uint64, ts int64, records [][]byte) int {
	return encodeFrame(b, Version, segID, pos, durable, first, ts, records)
}

// encodeFrame is EncodeFrame in format version v (a writer appends to a
// file in the file's version).
func encodeFrame(b []byte, v uint32, segID uint64, pos, durable int64, first uint64, ts int64, records [][]byte) int {
	hl := RecordHeaderSize(v)
	plen := payloadSize(hl, records)
	size := FrameSize(plen)
	_ = b[size-1]
	putFrameHeader(b, FrameRecords, durableMark(pos, durable), plen, len(records), first, ts)
	p := FrameHeaderLen
	for i, r := range records {
		binary.LittleEndian.PutUint32(b[p:], uint32(len(r)))
		if hl == RecordHeaderLen {
			binary.LittleEndian.PutUint32(b[p+4:], RecordChecksum(segID, first+uint64(i), pos+int64(p), r))
		}
		p += hl
		p += copy(b[p:], r)
	}
	clear(b[p:size])
	binary.LittleEndian.PutUint32(b[0:4], frameChecksum(segID, pos, b[4:FrameHeaderLen], b[FrameHeaderLen:p]))
	return size
}

func putFrameHeader(b []byte, typ uint8, mark uint32, plen, count int, first uint64, ts int64) {
	b[4] = typ
	b[5], b[6], b[7] = byte(mark), byte(mark>>8), byte(mark>>16)
	binary.LittleEndian.PutUint32(b[8:12], uint32(plen))
	binary.LittleEndian.PutUint32(b[12:16], uint32(count))
	binary.LittleEndian.PutUint64(b[16:24], first)
	binary.LittleEndian.PutUint64(b[24:32], uint64(ts))
}

// FooterFrameSize is the size of a footer frame carrying n bytes of the
// caller's footer. A footer payload is padded so the frame has no padding
// of its own: its tail is the last 16 bytes of the frame and of the file.
func FooterFrameSize(n int) int { return FrameHeaderLen + alignUp(n+FooterTailLen, FrameAlign) }

// EncodeFooter writes a footer frame carrying footer at position pos into b
// (at least FooterFrameSize(len(footer)) bytes); next is the offset after
// the file's last record; durable is as for EncodeFrame. A decoder gets
// footer back followed by up to 7 zero bytes.
func EncodeFooter(b []byte, segID uint64, pos, durable int64, next uint64, ts int64, footer []byte) int {
	size := FooterFrameSize(len(footer))
	_ = b[size-1]
	putFrameHeader(b, FrameFooter, durableMark(pos, durable), size-FrameHeaderLen, 0, next, ts)
	p := FrameHeaderLen + copy(b[FrameHeaderLen:], footer)
	clear(b[p:size])
	binary.LittleEndian.PutUint64(b[size-FooterTailLen:], uint64(pos))
	copy(b[size-8:size], FooterMagic)
	binary.LittleEndian.PutUint32(b[0:4], frameChecksum(segID, pos, b[4:FrameHeaderLen], b[FrameHeaderLen:size]))
	return size
}

func frameChecksum(segID uint64, pos int64, headerTail, payload []byte) uint32 {
	var seed [16]byte
	binary.LittleEndian.PutUint64(seed[0:8], segID)
	binary.LittleEndian.PutUint64(seed[8:16], uint64(pos))
	c := crc32.Update(0, castagnoli, seed[:])
	c = crc32.Update(c, castagnoli, headerTail)
	return crc32.Update(c, castagnoli, payload)
}

// DecodeFrameHeader parses the fixed part of a frame and checks what can be
// checked without the payload: type, and that the lengths
// are within limit (and so safe to allocate for). It returns errZeroHeader
// for an all-zero header.
func DecodeFrameHeader(b []byte, limit int) (FrameHeader, error) {
	if len(b) < FrameHeaderLen {
		return FrameHeader{}, errShortHeader
	}
	b = b[:FrameHeaderLen]
	if isZero(b) {
		return FrameHeader{}, errZeroHeader
	}
	h := FrameHeader{
		Type:      b[4],
		Length:    binary.LittleEndian.Uint32(b[8:12]),
		Count:     binary.LittleEndian.Uint32(b[12:16]),
		First:     binary.LittleEndian.Uint64(b[16:24]),
		Timestamp: int64(binary.LittleEndian.Uint64(b[24:32])),
		mark:      uint32(b[5]) | uint32(b[6])<<8 | uint32(b[7])<<16,
		checksum:  binary.LittleEndian.Uint32(b[0:4]),
	}
	copy(h.headerTail[:], b[4:])
	switch {
	case h.Type != FrameRecords && h.Type != FrameFooter:
		return h, fmt.Errorf("unknown frame type %d", h.Type)
	case int64(h.Length) > int64(min(limit, MaxFramePayload)):
		return h, fmt.Errorf("payload length %d exceeds the limit %d", h.Length, min(limit, MaxFramePayload))
	case h.Type == FrameRecords && h.Count == 0:
		return h, errors.New("frame with zero records")
	case h.Type == FrameRecords && int64(h.Count)*minRecordHeaderLen > int64(h.Length):
		return h, fmt.Errorf("%d records cannot fit in %d payload bytes", h.Count, h.Length)
	case h.Type == FrameFooter && h.Count != 0:
		return h, fmt.Errorf("footer frame with record count %d", h.Count)
	case h.Type == FrameFooter && h.Length < FooterTailLen:
		return h, fmt.Errorf("footer payload of %d bytes is shorter than its tail", h.Length)
	}
	return h, nil
}

// VerifyFrame checks the checksum and the contents of a frame whose header
// h was decoded from position pos of the file whose header is hdr; payload
// is its Length bytes (for a footer: up to the end of the frame, padding
// included). In a version 3 file every record's checksum is checked too, so
// a frame that passes holds records a point read will find valid.
func VerifyFrame(h FrameHeader, hdr FileHeader, pos int64, payload []byte) error {
	if got := frameChecksum(hdr.SegmentID, pos, h.headerTail[:], payload); got != h.checksum {
		return fmt.Errorf("frame checksum %#08x, want %#08x (damaged, or a frame of another file or position)", got, h.checksum)
	}
	if h.Type == FrameFooter {
		tail := payload[len(payload)-FooterTailLen:]
		if at := int64(binary.LittleEndian.Uint64(tail)); at != pos || string(tail[8:]) != FooterMagic {
			return fmt.Errorf("footer tail names position %d (magic %q), the frame is at %d", at, tail[8:], pos)
		}
		return nil
	}
	hl := hdr.RecordHeaderLen()
	n, p := uint32(0), 0
	for p < len(payload) {
		if len(payload)-p < hl {
			return fmt.Errorf("record %d: header cut at payload byte %d", n, p)
		}
		l := int(binary.LittleEndian.Uint32(payload[p:]))
		if l > len(payload)-p-hl {
			return fmt.Errorf("record %d: length %d runs past the payload (%d bytes left)", n, l, len(payload)-p-hl)
		}
		if hl == RecordHeaderLen {
			rpos := pos + FrameHeaderLen + int64(p)
			if err := VerifyRecord(hdr.SegmentID, h.First+uint64(n), rpos, binary.LittleEndian.Uint32(payload[p+4:]), payload[p+hl:p+hl+l]); err != nil {
				return err
			}
		}
		p += hl + l
		n++
	}
	if n != h.Count {
		return fmt.Errorf("payload holds %d records, header says %d", n, h.Count)
	}
	return nil
}

// Records calls fn for each record of a verified payload of a file of
// version v. The record slices alias payload.
func Records(v uint32, payload []byte, fn func(i int, rec []byte) bool) {
	hl := RecordHeaderSize(v)
	for i, p := 0, 0; p+hl <= len(payload); i++ {
		l := int(binary.LittleEndian.Uint32(payload[p:]))
		p += hl
		if !fn(i, payload[p:p+l]) {
			return
		}
		p += l
	}
}

var (
	errZeroHeader  = errors.New("all-zero frame header")
	errShortHeader = errors.New("frame header cut by the end of the file")
)

func alignUp(n, a int) int { return (n + a - 1) &^ (a - 1) }

var zeros [4096]byte

// isZero reports whether b holds only zero bytes (bytes.Equal against a zero
// page runs at memory speed).
func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// High-water mark, in the header block at HighWaterPos (a sector of its
// own, so a crash leaves it old or new, never a mix), little endian:
//
//	0               8               16      20
//	+---------------+---------------+-------+
//	| magic         | high water    | crc32c|
//	+---------------+---------------+-------+
//
// magic is "seghiwat"; high water is a file position the writer has never
// written past (and, by the rule below, never will before it makes a new
// mark durable); crc32c (Castagnoli) covers the segment id (8 bytes LE)
// and bytes [0, 16), so a mark copied from another file fails it. Every
// other byte of the sector is zero. All zeros: the file carries no mark
// (yet), and recovery reads the rest of the file.
//
// Only files of version HighWaterVersion and later carry a mark: a build
// of version 3 or older reads any non-zero byte here as damage, so a
// writer never marks an older file, and the scanner never takes a mark
// from one as a bound. (A build that predated the version bump marked
// version 3 files: their mark is accepted as valid bytes, ignored, and
// erased by the next writer that opens the file, which makes the file
// readable by version 3 builds again.)
//
// The writer's rule: no write reaches past a mark that is durable. Before
// a flush ends within MaxWrite of the mark, the flush also writes a new
// mark (HighWaterStep further on), which its own fdatasync makes durable:
// the next flush, which ends at most MaxWrite further, stays below it.
const (
	HighWaterPos = 512
	HighWaterLen = 20
	// HighWaterStep is how far past the lookahead a new mark is set: a
	// mark is written about once per HighWaterStep of data, and recovery
	// reads at most MaxWrite + HighWaterStep past the end of the data.
	HighWaterStep  = 1 << 20
	highWaterMagic = "seghiwat"
)

// encodeHighWater writes the mark hw of the file with segment id segID into
// b[:HighWaterLen].
func encodeHighWater(b []byte, segID uint64, hw int64) {
	copy(b[0:8], highWaterMagic)
	binary.LittleEndian.PutUint64(b[8:16], uint64(hw))
	binary.LittleEndian.PutUint32(b[16:20], highWaterChecksum(segID, b[:16]))
}

func highWaterChecksum(segID uint64, b []byte) uint32 {
	var id [8]byte
	binary.LittleEndian.PutUint64(id[:], segID)
	return crc32.Update(crc32.Checksum(id[:], castagnoli), castagnoli, b)
}

// decodeHighWater reads the mark in b[:HighWaterLen] of the file with
// segment id segID: 0 and no error if b is all zeros (no mark).
func decodeHighWater(b []byte, segID uint64) (int64, error) {
	b = b[:HighWaterLen]
	if isZero(b) {
		return 0, nil
	}
	if string(b[0:8]) != highWaterMagic {
		return 0, fmt.Errorf("high-water mark magic %q", b[0:8])
	}
	if got, want := highWaterChecksum(segID, b[:16]), binary.LittleEndian.Uint32(b[16:20]); got != want {
		return 0, fmt.Errorf("high-water mark checksum %#x, want %#x", got, want)
	}
	hw := binary.LittleEndian.Uint64(b[8:16])
	if hw < DataStart || hw > 1<<62 {
		return 0, fmt.Errorf("high-water mark %d is impossible (frames start at %d)", hw, DataStart)
	}
	return int64(hw), nil
}
