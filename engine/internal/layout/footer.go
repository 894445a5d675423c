package layout

import (
	"encoding/binary"

	"github.com/segstore/segstore/wal"
)

// IndexEntry is one entry of a segment's position index. In a footer of
// version 2 it marks the record at offset Off whose header is at file
// position Pos, in a frame stamped Time: Back bytes after its frame's
// start, Before records of that frame before it and Left records of it
// from this one on. In a footer of version 1 it marks a frame (Pos is the
// frame's, Off its first offset; Back, Before and Left are 0).
type IndexEntry struct {
	Off    uint64
	Pos    int64
	Time   int64
	Back   uint32
	Before uint32
	Left   uint32
}

// Footer version 1, the engine's bytes in the wal footer frame of a file
// of wal format version 1 or 2, little endian:
//
//	0        4        8                16               24      28       32
//	+--------+--------+----------------+----------------+-------+--------+---- - -
//	|version | flags  | record count   | data end (pos) |interv.|entries | entries × (offset u64 | position u64 | time i64)
//	+--------+--------+----------------+----------------+-------+--------+---- - -
//
// version is 1; flags are written as zeros and not read; record count is
// the segment's records (base + count is the footer frame's next offset),
// data end where they end (the footer frame's position), interv. the
// index interval (uint32). An entry marks each frame that starts a new
// interval; entries ascend in offset and position inside the segment's
// records, and the first is the first frame (at wal.DataStart). The
// footer's own bytes carry no checksum: the wal frame's covers them.
const (
	FooterV1Version   = 1
	FooterV1HeaderLen = 32
	FooterV1EntryLen  = 24
)

const footerFormat = "footer"

// FooterV1 is a decoded footer of version 1.
type FooterV1 struct {
	Count    uint64
	DataEnd  int64
	Interval int64
	Entries  []IndexEntry
}

// FooterV1Len is the length of a version 1 footer of n entries.
func FooterV1Len(n int) int { return FooterV1HeaderLen + FooterV1EntryLen*n }

// FooterV1Fits is how many entries a version 1 footer holds in a footer
// frame that carries at most batch bytes, with its tail.
func FooterV1Fits(batch int) int {
	return (batch - wal.FooterTailLen - FooterV1HeaderLen) / FooterV1EntryLen
}

// EncodeFooterV1 returns the version 1 footer of a segment whose count
// records end at dataEnd, indexed at interval by entries.
func EncodeFooterV1(count uint64, dataEnd, interval int64, entries []IndexEntry) []byte {
	b := make([]byte, FooterV1Len(len(entries)))
	binary.LittleEndian.PutUint32(b[0:], FooterV1Version)
	binary.LittleEndian.PutUint64(b[8:], count)
	binary.LittleEndian.PutUint64(b[16:], uint64(dataEnd))
	binary.LittleEndian.PutUint32(b[24:], uint32(interval))
	binary.LittleEndian.PutUint32(b[28:], uint32(len(entries)))
	for i, e := range entries {
		p := b[FooterV1HeaderLen+i*FooterV1EntryLen:]
		binary.LittleEndian.PutUint64(p[0:], e.Off)
		binary.LittleEndian.PutUint64(p[8:], uint64(e.Pos))
		binary.LittleEndian.PutUint64(p[16:], uint64(e.Time))
	}
	return b
}

// DecodeFooterV1 checks b, the version 1 footer of the segment at base
// whose footer frame is at pos with next offset next, and returns it.
// Bytes after the entries (the wal pads a footer to 8 bytes) are not
// read.
func DecodeFooterV1(b []byte, base, next uint64, pos int64) (FooterV1, error) {
	if len(b) < FooterV1HeaderLen {
		return FooterV1{}, errorf(footerFormat, 0, "footer of %d bytes is shorter than its header", len(b))
	}
	if v := binary.LittleEndian.Uint32(b[0:]); v != FooterV1Version {
		return FooterV1{}, errorf(footerFormat, 0, "footer version %d, this build reads %d", v, FooterV1Version)
	}
	f := FooterV1{Count: binary.LittleEndian.Uint64(b[8:]), DataEnd: int64(binary.LittleEndian.Uint64(b[16:])),
		Interval: int64(binary.LittleEndian.Uint32(b[24:]))}
	n := int(binary.LittleEndian.Uint32(b[28:]))
	switch {
	case base+f.Count != next:
		return FooterV1{}, errorf(footerFormat, 8, "footer counts %d records from %d, the frame says the next offset is %d", f.Count, base, next)
	case f.DataEnd != pos:
		return FooterV1{}, errorf(footerFormat, 16, "footer says records end at %d, the footer frame is at %d", f.DataEnd, pos)
	case n > (len(b)-FooterV1HeaderLen)/FooterV1EntryLen:
		return FooterV1{}, errorf(footerFormat, 28, "footer claims %d index entries in %d bytes", n, len(b))
	case f.Interval <= 0:
		return FooterV1{}, errorf(footerFormat, 24, "footer index interval %d", f.Interval)
	}
	f.Entries = make([]IndexEntry, n)
	for i := range f.Entries {
		at := FooterV1HeaderLen + i*FooterV1EntryLen
		p := b[at:]
		e := IndexEntry{Off: binary.LittleEndian.Uint64(p[0:]), Pos: int64(binary.LittleEndian.Uint64(p[8:])), Time: int64(binary.LittleEndian.Uint64(p[16:]))}
		if e.Off < base || e.Off >= next || e.Pos < wal.DataStart || e.Pos >= f.DataEnd ||
			(i > 0 && (e.Off <= f.Entries[i-1].Off || e.Pos <= f.Entries[i-1].Pos)) {
			return FooterV1{}, errorf(footerFormat, int64(at), "footer index entry %d (offset %d at %d) is out of order or range", i, e.Off, e.Pos)
		}
		f.Entries[i] = e
	}
	if f.Count > 0 && (n == 0 || f.Entries[0].Off != base || f.Entries[0].Pos != wal.DataStart) {
		return FooterV1{}, errorf(footerFormat, FooterV1HeaderLen, "footer index does not start at the first frame")
	}
	return f, nil
}
