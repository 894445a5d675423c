package layout

import (
	"encoding/binary"

	"github.com/segstore/segstore/wal"
)

// MANIFEST's payload (inside a metadata file of KindManifest) lists what
// the sealed segments' footers say, little endian:
//
//	0        4        8
//	+--------+--------+---- - -
//	| count  | 0      | count × entry (56 bytes) | clean close record (optional)
//	+--------+--------+---- - -
//
//	entry: 0      8      16        24     32         40          48      52    56
//	       +------+------+---------+------+----------+-----------+-------+-----+
//	       | base | next | dataEnd | size | sealedAt | firstTime | crc   | 0   |
//	       +------+------+---------+------+----------+-----------+-------+-----+
//
// base is the segment's first offset, next the offset after its last
// record, dataEnd its footer frame's position (where its records end),
// size its file's size, sealedAt and firstTime unix nanoseconds (the seal,
// the first frame), crc the checksum that names its footer (the footer
// frame's own checksum for a file of wal format version 3 and later, the
// CRC-32C of the footer bytes for older ones). The head's second word and
// an entry's last 4 bytes are reserved: written as zeros, not read.
//
// A clean close adds one record after the entries, about the last
// segment:
//
//	0          8      16     24     32     40         48        56     60     64
//	+----------+------+------+------+------+----------+---------+------+------+---- - -
//	| cleanen2 | base | end  | size | next | lastTime | lastRec | n    | 0    | index (n bytes)
//	+----------+------+------+------+------+----------+---------+------+------+---- - -
//
// The segment at base has its records end at file position end with next
// offset next, its last frame stamped lastTime, its last record at
// lastRec (0 for files before version 3), in a file of size bytes; index
// (n ≥ 1 bytes) is its index in the footer's encoding (EncodeFooterV1 or
// EncodeFooterV2). The word after n must be zero. A manifest of an
// earlier version ends instead in a 32-byte record: "cleanend", base,
// end, size (uint64 each).
const (
	// ManifestHeaderLen is the count and the reserved word.
	ManifestHeaderLen = 8
	// ManifestEntryLen is one entry.
	ManifestEntryLen = 56
	// CleanMagic begins the clean close record.
	CleanMagic = "cleanen2"
	// CleanHeaderLen is the clean close record before its index bytes.
	CleanHeaderLen = 64
	// EarlierCleanMagic begins an earlier version's clean close record.
	EarlierCleanMagic = "cleanend"
	// EarlierCleanLen is an earlier version's clean close record.
	EarlierCleanLen = 32
)

const manifestFormat = "manifest"

// ManifestEntry is what a sealed segment's footer says about it.
type ManifestEntry struct {
	Base, Next    uint64
	DataEnd, Size int64
	SealedAt      int64
	FirstTime     int64
	Checksum      uint32
}

// CleanEnd is where a clean close left the last segment.
type CleanEnd struct {
	// Earlier: the 32-byte record of an earlier version, which holds only
	// Base, End and Size.
	Earlier   bool
	Base      uint64
	End, Size int64
	Next      uint64
	LastTime  int64
	LastRec   int64
	Index     []byte
}

// Manifest is a decoded MANIFEST payload: its entries in the order the
// file has them (a base listed twice is listed twice) and its clean close
// record, if it has one.
type Manifest struct {
	Entries []ManifestEntry
	Clean   *CleanEnd
}

// EncodeManifest returns the payload listing entries, then clean's
// record if clean is not nil.
func EncodeManifest(entries []ManifestEntry, clean *CleanEnd) []byte {
	n := ManifestHeaderLen + ManifestEntryLen*len(entries)
	b := make([]byte, n, n+EarlierCleanLen)
	binary.LittleEndian.PutUint32(b, uint32(len(entries)))
	for i, e := range entries {
		p := b[ManifestHeaderLen+i*ManifestEntryLen:]
		binary.LittleEndian.PutUint64(p[0:], e.Base)
		binary.LittleEndian.PutUint64(p[8:], e.Next)
		binary.LittleEndian.PutUint64(p[16:], uint64(e.DataEnd))
		binary.LittleEndian.PutUint64(p[24:], uint64(e.Size))
		binary.LittleEndian.PutUint64(p[32:], uint64(e.SealedAt))
		binary.LittleEndian.PutUint64(p[40:], uint64(e.FirstTime))
		binary.LittleEndian.PutUint32(p[48:], e.Checksum)
	}
	switch {
	case clean == nil:
	case clean.Earlier:
		b = append(b, EarlierCleanMagic...)
		b = binary.LittleEndian.AppendUint64(b, clean.Base)
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.End))
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.Size))
	default:
		b = append(b, CleanMagic...)
		b = binary.LittleEndian.AppendUint64(b, clean.Base)
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.End))
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.Size))
		b = binary.LittleEndian.AppendUint64(b, clean.Next)
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.LastTime))
		b = binary.LittleEndian.AppendUint64(b, uint64(clean.LastRec))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(clean.Index)))
		b = binary.LittleEndian.AppendUint32(b, 0)
		b = append(b, clean.Index...)
	}
	return b
}

// DecodeManifest decodes a MANIFEST payload. The clean close record's
// Index is a slice of b. Entries and the record must be in range: an
// entry's next past its base and its footer inside its file, after the
// file's header region; the record's end after the header region and in
// its file, its last record before its end.
func DecodeManifest(b []byte) (Manifest, error) {
	if len(b) < ManifestHeaderLen {
		return Manifest{}, errorf(manifestFormat, 0, "manifest shorter than its header")
	}
	n := int(binary.LittleEndian.Uint32(b))
	if n > (len(b)-ManifestHeaderLen)/ManifestEntryLen {
		return Manifest{}, errorf(manifestFormat, 0, "manifest claims %d entries in %d bytes", n, len(b))
	}
	at := ManifestHeaderLen + n*ManifestEntryLen
	tail := b[at:]
	var m Manifest
	switch {
	case len(tail) == 0:
	case len(tail) == EarlierCleanLen && string(tail[:8]) == EarlierCleanMagic:
		c := tail[8:]
		m.Clean = &CleanEnd{Earlier: true, Base: binary.LittleEndian.Uint64(c),
			End: int64(binary.LittleEndian.Uint64(c[8:])), Size: int64(binary.LittleEndian.Uint64(c[16:]))}
	case len(tail) >= CleanHeaderLen && string(tail[:8]) == CleanMagic:
		c := tail[8:]
		clean := &CleanEnd{Base: binary.LittleEndian.Uint64(c), End: int64(binary.LittleEndian.Uint64(c[8:])), Size: int64(binary.LittleEndian.Uint64(c[16:])),
			Next: binary.LittleEndian.Uint64(c[24:]), LastTime: int64(binary.LittleEndian.Uint64(c[32:])), LastRec: int64(binary.LittleEndian.Uint64(c[40:]))}
		if k := int64(binary.LittleEndian.Uint32(c[48:])); k == 0 || k != int64(len(tail)-CleanHeaderLen) {
			return Manifest{}, errorf(manifestFormat, int64(at+56), "manifest's clean close record claims %d index bytes in %d", k, len(tail)-CleanHeaderLen)
		}
		if binary.LittleEndian.Uint32(c[52:]) != 0 {
			return Manifest{}, errorf(manifestFormat, int64(at+60), "manifest's clean close record has a non-zero reserved word")
		}
		clean.Index = tail[CleanHeaderLen:]
		if clean.End < wal.DataStart || clean.Size < clean.End || clean.Next < clean.Base || clean.LastRec < 0 || clean.LastRec >= clean.End {
			return Manifest{}, errorf(manifestFormat, int64(at), "manifest's clean close record (segment %d, end %d, size %d, next %d) is out of range", clean.Base, clean.End, clean.Size, clean.Next)
		}
		m.Clean = clean
	default:
		return Manifest{}, errorf(manifestFormat, int64(at), "manifest claims %d entries in %d bytes", n, len(b))
	}
	m.Entries = make([]ManifestEntry, n)
	for i := range m.Entries {
		p := b[ManifestHeaderLen+i*ManifestEntryLen:]
		e := ManifestEntry{
			Base: binary.LittleEndian.Uint64(p[0:]), Next: binary.LittleEndian.Uint64(p[8:]),
			DataEnd: int64(binary.LittleEndian.Uint64(p[16:])), Size: int64(binary.LittleEndian.Uint64(p[24:])),
			SealedAt: int64(binary.LittleEndian.Uint64(p[32:])), FirstTime: int64(binary.LittleEndian.Uint64(p[40:])),
			Checksum: binary.LittleEndian.Uint32(p[48:]),
		}
		if e.Next <= e.Base || e.DataEnd < wal.DataStart || e.Size <= e.DataEnd {
			return Manifest{}, errorf(manifestFormat, int64(ManifestHeaderLen+i*ManifestEntryLen), "manifest entry %d (segment %d) is out of range", i, e.Base)
		}
		m.Entries[i] = e
	}
	return m, nil
}
