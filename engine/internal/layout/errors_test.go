package layout

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/wal"
)

// TestDecodersSayWhere: each damage to each format is refused with an
// *Error naming the format and the byte of the input where the damage
// is.
func TestDecodersSayWhere(t *testing.T) {
	const segID, base = 0xfeed, 100
	meta := func(kind uint32, payload []byte) []byte {
		b := make([]byte, 512)
		EncodeMeta(b, kind, payload)
		return b
	}
	start := meta(KindStart, EncodeStart(7))
	entries := []ManifestEntry{
		{Base: 0, Next: 10, DataEnd: wal.DataStart + 100, Size: wal.DataStart + 200},
		{Base: 10, Next: 30, DataEnd: wal.DataStart + 900, Size: wal.DataStart + 1000},
	}
	manifest := EncodeManifest(entries, &CleanEnd{Base: 30, End: wal.DataStart + 64, Size: 1 << 20, Next: 40, LastRec: wal.DataStart + 32, Index: []byte{1}})
	v1 := EncodeFooterV1(80, wal.DataStart+9000, 4096, []IndexEntry{{Off: 100, Pos: wal.DataStart}, {Off: 140, Pos: wal.DataStart + 5000}})
	var index []IndexEntry
	for i := range 300 {
		index = append(index, IndexEntry{Off: base + uint64(2*i), Pos: wal.DataStart + wal.FrameHeaderLen + int64(20*i), Time: int64(i), Back: wal.FrameHeaderLen, Left: 2})
	}
	const pos = wal.DataStart + 9000
	v2 := EncodeFooterV2(segID, base, 600, pos, 4096, index)
	_, blocksAt := FooterV2Size(pos, len(index))
	head := int64(blocksAt - (pos + wal.FrameHeaderLen)) // the first block, in the footer
	durable := make([]byte, DurableSize)
	EncodeDurable(durable, Durable{Seq: 2, Open: 1})

	decodeV2 := func(b []byte) error { _, _, err := DecodeFooterV2(b, segID, base, base+600, pos); return err }
	rows := []struct {
		name   string
		in     []byte
		damage func(b []byte) []byte
		decode func(b []byte) error
		format string
		offset int64
	}{
		{"meta magic", start, func(b []byte) []byte { b[3] ^= 1; return b }, func(b []byte) error { _, err := DecodeMeta(b, KindStart); return err }, "metadata file", 0},
		{"meta kind", start, func(b []byte) []byte { b[8] = 2; return b }, func(b []byte) error { _, err := DecodeMeta(b, KindStart); return err }, "metadata file", 8},
		{"meta length", start, func(b []byte) []byte { b[14] = 1; return b }, func(b []byte) error { _, err := DecodeMeta(b, KindStart); return err }, "metadata file", 12},
		{"meta payload", start, func(b []byte) []byte { b[17] ^= 1; return b }, func(b []byte) error { _, err := DecodeMeta(b, KindStart); return err }, "metadata file", 24},
		{"meta after the record", start, func(b []byte) []byte { b[300] = 1; return b }, func(b []byte) error { _, err := DecodeMeta(b, KindStart); return err }, "metadata file", 300},
		{"START payload length", nil, nil, func([]byte) error { _, err := DecodeStart([]byte{1, 2, 3}); return err }, "START payload", 0},
		{"manifest count", manifest, func(b []byte) []byte { b[0] = 200; return b }, func(b []byte) error { _, err := DecodeManifest(b); return err }, "manifest", 0},
		{"manifest entry 1 range", manifest, func(b []byte) []byte { clear(b[8+56+8 : 8+56+16]); return b }, func(b []byte) error { _, err := DecodeManifest(b); return err }, "manifest", 8 + 56},
		{"manifest clean record length", manifest, func(b []byte) []byte { return b[:len(b)-1] }, func(b []byte) error { _, err := DecodeManifest(b); return err }, "manifest", 8 + 2*56 + 56},
		{"manifest clean record reserved", manifest, func(b []byte) []byte { b[8+2*56+61] = 1; return b }, func(b []byte) error { _, err := DecodeManifest(b); return err }, "manifest", 8 + 2*56 + 60},
		{"manifest tail", manifest, func(b []byte) []byte { b[8+2*56] = 'x'; return b }, func(b []byte) error { _, err := DecodeManifest(b); return err }, "manifest", 8 + 2*56},
		{"footer v1 version", v1, func(b []byte) []byte { b[0] = 2; return b }, func(b []byte) error { _, err := DecodeFooterV1(b, base, 180, pos); return err }, "footer", 0},
		{"footer v1 count", v1, func(b []byte) []byte { b[8]++; return b }, func(b []byte) error { _, err := DecodeFooterV1(b, base, 180, pos); return err }, "footer", 8},
		{"footer v1 entry order", v1, func(b []byte) []byte { b[32+24] = 99; return b }, func(b []byte) error { _, err := DecodeFooterV1(b, base, 180, pos); return err }, "footer", 32 + 24},
		{"footer v2 pad", v2, func(b []byte) []byte { b[9] = 1; return b }, decodeV2, "footer", 9},
		{"footer v2 trailer checksum", v2, func(b []byte) []byte { b[len(b)-1] ^= 1; return b }, decodeV2, "footer", int64(len(v2)) - 4},
		{"footer v2 block 1 checksum", v2, func(b []byte) []byte { b[head+IndexBlockLen+100] ^= 1; return b }, decodeV2, "footer", head + IndexBlockLen},
		{"footer v2 block 0 count", v2, func(b []byte) []byte {
			blk := b[head:][:IndexBlockLen]
			binary.LittleEndian.PutUint32(blk[BlockCountAt:], 0)
			binary.LittleEndian.PutUint32(blk, BlockChecksum(segID, blocksAt, blk[4:]))
			return b
		}, decodeV2, "footer", head + BlockCountAt},
		{"index block cut short", v2[head:][:IndexBlockLen], func(b []byte) []byte { return b[:100] }, func(b []byte) error { _, _, err := DecodeIndexBlock(b, segID, base, blocksAt); return err }, "footer", 100},
		{"DURABLE magic", durable, func(b []byte) []byte { b[0] = 'x'; return b }, func(b []byte) error { _, err := DecodeDurable(b); return err }, "DURABLE", 0},
		{"DURABLE order", durable, func(b []byte) []byte { binary.NativeEndian.PutUint64(b[DurableOrder:], 0x0807060504030201); return b }, func(b []byte) error { _, err := DecodeDurable(b); return err }, "DURABLE", DurableOrder},
		{"DURABLE short", durable, func(b []byte) []byte { return b[:56] }, func(b []byte) error { _, err := DecodeDurable(b); return err }, "DURABLE", 56},
	}
	for _, r := range rows {
		t.Run(r.name, func(t *testing.T) {
			var in []byte
			if r.in != nil {
				require.NoError(t, r.decode(r.in), "the undamaged input decodes")
				in = r.damage(bytes.Clone(r.in))
			}
			err := r.decode(in)
			var le *Error
			require.True(t, errors.As(err, &le), "refused with an *Error: %v", err)
			require.Equal(t, r.format, le.Format, "%v", err)
			require.Equal(t, r.offset, le.Offset, "%v", err)
		})
	}
}
