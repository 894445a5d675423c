package layout

import (
	"encoding/binary"
	"hash/crc32"
)

// A metadata file (START, MANIFEST) holds one small record, written whole
// from position 0, little endian:
//
//	0        8        12       16              16+n     20+n
//	+--------+--------+--------+---------- - - -+--------+
//	| magic  | kind   | n      | payload (n)    | crc32c |  then zeros to the end of the file
//	+--------+--------+--------+---------- - - -+--------+
//
// magic is "segmeta1"; kind says which file it is (KindStart,
// KindManifest); n is the payload's length; crc32c (Castagnoli) covers
// bytes [0, 16+n): magic, kind, n and payload. The file is written in
// whole device blocks, so zeros follow the record to the end of its last
// block, and the decoder checks that they are zeros.
const (
	// MetaMagic begins every metadata file.
	MetaMagic = "segmeta1"
	// MetaHeaderLen is the record's head: magic, kind and n.
	MetaHeaderLen = 16
	// MetaCRCLen is the checksum after the payload.
	MetaCRCLen = 4
	// KindStart is START: the first retained offset (see EncodeStart).
	KindStart uint32 = 1
	// KindManifest is MANIFEST: what the sealed segments' footers say (see
	// EncodeManifest).
	KindManifest uint32 = 2
)

const metaFormat = "metadata file"

// MetaLen is the length of the record of a payload of n bytes (the file is
// that rounded up to whole device blocks, the rest zeros).
func MetaLen(n int) int { return MetaHeaderLen + n + MetaCRCLen }

// EncodeMeta writes the record of kind holding payload at the start of
// dst, which must hold at least MetaLen(len(payload)) bytes and be zero
// after them, and returns the record's length.
func EncodeMeta(dst []byte, kind uint32, payload []byte) int {
	n := MetaLen(len(payload))
	copy(dst, MetaMagic)
	binary.LittleEndian.PutUint32(dst[8:], kind)
	binary.LittleEndian.PutUint32(dst[12:], uint32(len(payload)))
	copy(dst[MetaHeaderLen:], payload)
	binary.LittleEndian.PutUint32(dst[n-MetaCRCLen:], crc32.Checksum(dst[:n-MetaCRCLen], castagnoli))
	return n
}

// DecodeMeta returns the payload of b, a whole metadata file of kind
// (its bytes to its end), as a slice of b; or an *Error.
func DecodeMeta(b []byte, kind uint32) ([]byte, error) {
	size := int64(len(b))
	if size < MetaHeaderLen+MetaCRCLen || string(b[:8]) != MetaMagic {
		return nil, errorf(metaFormat, 0, "not a segstore metadata file")
	}
	if k := binary.LittleEndian.Uint32(b[8:]); k != kind {
		return nil, errorf(metaFormat, 8, "metadata of the wrong kind (%d, want %d)", k, kind)
	}
	n := int64(binary.LittleEndian.Uint32(b[12:]))
	if MetaHeaderLen+n+MetaCRCLen > size {
		return nil, errorf(metaFormat, 12, "metadata of the wrong length (%d payload bytes in a file of %d)", n, size)
	}
	end := MetaHeaderLen + n
	if crc32.Checksum(b[:end], castagnoli) != binary.LittleEndian.Uint32(b[end:]) {
		return nil, errorf(metaFormat, end, "metadata checksum mismatch")
	}
	if i := firstNonZero(b[end+MetaCRCLen:]); i >= 0 {
		return nil, errorf(metaFormat, end+MetaCRCLen+int64(i), "non-zero bytes after the metadata record (written as zeros)")
	}
	return b[MetaHeaderLen:end], nil
}

// START's payload is the log's first retained offset (what TruncateFront
// kept), little endian:
//
//	0                8
//	+----------------+
//	| first offset   |
//	+----------------+
const StartLen = 8

// EncodeStart returns START's payload for first.
func EncodeStart(first uint64) []byte { return binary.LittleEndian.AppendUint64(nil, first) }

// DecodeStart returns the first retained offset of START's payload p.
func DecodeStart(p []byte) (uint64, error) {
	if len(p) != StartLen {
		return 0, errorf("START payload", 0, "START holds %d bytes, want %d", len(p), StartLen)
	}
	return binary.LittleEndian.Uint64(p), nil
}
