package wal

import (
	"encoding/binary"
	"hash/crc32"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRecordChecksumCoversItsFields: the record checksum is CRC-32C of the
// segment id, offset, position (8 bytes each), length (4) and the bytes,
// little endian, in that order; changing any of them changes it.
func TestRecordChecksumCoversItsFields(t *testing.T) {
	rec := []byte("a record of some bytes")
	b := binary.LittleEndian.AppendUint64(nil, 0x1122334455667788)
	b = binary.LittleEndian.AppendUint64(b, 42)
	b = binary.LittleEndian.AppendUint64(b, 4128)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(rec)))
	b = append(b, rec...)
	want := crc32.Checksum(b, crc32.MakeTable(crc32.Castagnoli))
	require.Equal(t, want, RecordChecksum(0x1122334455667788, 42, 4128, rec))
	for _, other := range []uint32{
		RecordChecksum(0x1122334455667789, 42, 4128, rec),
		RecordChecksum(0x1122334455667788, 43, 4128, rec),
		RecordChecksum(0x1122334455667788, 42, 4136, rec),
		RecordChecksum(0x1122334455667788, 42, 4128, rec[1:]),
	} {
		require.NotEqual(t, want, other)
	}
}
