package layout

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/wal"
)

// Every decoder gets arbitrary input: it must never panic, and what it
// accepts must encode back to the same bytes, or where the decode is not
// canonical (bytes written as zeros and not read) to the same bytes with
// those cleared.

// FuzzMeta: a metadata file of any kind decodes only if encoding its
// payload again gives the same file, zeros to its end included
// (canonical).
func FuzzMeta(f *testing.F) {
	good := make([]byte, 64)
	EncodeMeta(good, KindManifest, []byte("payload"))
	f.Add(good, KindManifest)
	f.Add(good, KindStart)
	f.Add(good[:10], KindManifest)
	f.Fuzz(func(t *testing.T, b []byte, kind uint32) {
		p, err := DecodeMeta(b, kind)
		if err != nil {
			return
		}
		again := make([]byte, len(b))
		EncodeMeta(again, kind, p)
		require.Equal(t, b, again)
	})
}

// FuzzStart: a START file decodes to an offset only if that offset
// encodes to the same file (canonical).
func FuzzStart(f *testing.F) {
	good := make([]byte, 512)
	EncodeMeta(good, KindStart, EncodeStart(1234))
	f.Add(good)
	f.Add(good[:24])
	short := make([]byte, 512)
	EncodeMeta(short, KindStart, []byte{1, 2, 3})
	f.Add(short)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := DecodeMeta(b, KindStart)
		if err != nil {
			return
		}
		first, err := DecodeStart(p)
		if err != nil {
			return
		}
		again := make([]byte, len(b))
		EncodeMeta(again, KindStart, EncodeStart(first))
		require.Equal(t, b, again)
	})
}

// FuzzManifest: a manifest payload decodes only if its entries and clean
// close record encode back to it, but for the reserved words (the head's
// second and each entry's last), which are written as zeros and not read
// (not canonical there).
func FuzzManifest(f *testing.F) {
	entries := []ManifestEntry{
		{Base: 0, Next: 10, DataEnd: wal.DataStart + 100, Size: wal.DataStart + 200, SealedAt: 5, FirstTime: 1, Checksum: 7},
		{Base: 10, Next: 30, DataEnd: wal.DataStart + 900, Size: wal.DataStart + 1000, SealedAt: 9, FirstTime: 6, Checksum: 8},
	}
	f.Add(EncodeManifest(entries, nil))
	f.Add(EncodeManifest(entries, &CleanEnd{Base: 30, End: wal.DataStart + 64, Size: 1 << 20, Next: 40, LastTime: 3, LastRec: wal.DataStart + 32, Index: []byte{1, 2, 3}}))
	f.Add(EncodeManifest(entries, &CleanEnd{Earlier: true, Base: 30, End: wal.DataStart + 64, Size: 1 << 20}))
	f.Add([]byte{255, 255, 255, 255, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			return
		}
		want := bytes.Clone(b)
		clear(want[4:ManifestHeaderLen])
		for i := range m.Entries {
			clear(want[ManifestHeaderLen+i*ManifestEntryLen+52 : ManifestHeaderLen+(i+1)*ManifestEntryLen])
		}
		require.Equal(t, want, EncodeManifest(m.Entries, m.Clean))
	})
}

// FuzzFooter: a version 1 footer decodes only if its entries encode back
// to it, but for its flags (written as zeros, not read) and any bytes
// after its entries (the wal pads a footer; not read): not canonical
// there.
func FuzzFooter(f *testing.F) {
	const base = 100
	good := EncodeFooterV1(80, wal.DataStart+9000, 4096, []IndexEntry{{Off: 100, Pos: wal.DataStart, Time: 1}, {Off: 140, Pos: wal.DataStart + 5000, Time: 2}})
	f.Add(good, uint64(180), int64(wal.DataStart+9000))
	f.Add(good[:20], uint64(180), int64(wal.DataStart+9000))
	f.Fuzz(func(t *testing.T, b []byte, next uint64, dataEnd int64) {
		v1, err := DecodeFooterV1(b, base, next, dataEnd)
		if err != nil {
			return
		}
		again := EncodeFooterV1(v1.Count, v1.DataEnd, v1.Interval, v1.Entries)
		want := bytes.Clone(b[:len(again)])
		clear(want[4:8])
		require.Equal(t, want, again)
	})
}

// FuzzFooterV2: a version 2 footer (index blocks, summary, trailer) of any
// bytes at any position is refused or decodes to entries that encode back
// to the same bytes, but for the head's and the trailer's flags (written
// as zeros, not read): not canonical there.
func FuzzFooterV2(f *testing.F) {
	const segID, base = 0xfeed, 100
	dataEnd := int64(wal.DataStart + 9000)
	var index []IndexEntry
	for i := range 300 { // three blocks
		index = append(index, IndexEntry{Off: base + uint64(2*i), Pos: wal.DataStart + wal.FrameHeaderLen + int64(20*i), Time: int64(i), Back: wal.FrameHeaderLen, Left: 2})
	}
	good := EncodeFooterV2(segID, base, 600, dataEnd, 4096, index)
	f.Add(good, uint64(base+600), dataEnd)
	f.Add(EncodeFooterV2(segID, base, 0, wal.DataStart, 4096, nil), uint64(base), int64(wal.DataStart))
	f.Add(good[:100], uint64(base+600), dataEnd)
	f.Add(good, uint64(base+600), int64(-1<<63))
	f.Fuzz(func(t *testing.T, b []byte, next uint64, pos int64) {
		ix, interval, err := DecodeFooterV2(b, segID, base, next, pos)
		if err != nil {
			return
		}
		again := EncodeFooterV2(segID, base, next-base, pos, interval, ix)
		want := bytes.Clone(b)
		clear(want[4:8])
		clear(want[len(want)-FooterTrailerLen+4:][:4])
		require.True(t, bytes.Equal(want, again), "footer re-encoded differs")
	})
}

// FuzzIndexBlock: an index block decodes only if its entries, count,
// first offset and next position encode back to the same 4096 bytes
// (canonical: its reserved word and the bytes after its entries are
// checked to be zeros). The input is the block's first bytes, the rest
// zeros (a short input is also decoded as it is, and refused); the
// seeds are blocks cut after their entries, since 4 KiB inputs stalled
// the fuzzing engine here.
func FuzzIndexBlock(f *testing.F) {
	const segID, base = 0xfeed, 100
	var index []IndexEntry
	for i := range 130 {
		index = append(index, IndexEntry{Off: base + uint64(i), Pos: wal.DataStart + wal.FrameHeaderLen + int64(20*i), Time: int64(i), Back: wal.FrameHeaderLen, Left: 1})
	}
	footer := EncodeFooterV2(segID, base, 130, wal.DataStart+9000, 4096, index)
	_, at := FooterV2Size(wal.DataStart+9000, len(index))
	head := int(at - (wal.DataStart + 9000 + wal.FrameHeaderLen))
	f.Add(footer[head:][:IndexBlockHead+EntriesPerBlock*IndexEntryLen], at)
	f.Add(footer[head+IndexBlockLen:][:IndexBlockHead+3*IndexEntryLen], at+IndexBlockLen)
	f.Add(footer[head:][:100], at)
	f.Fuzz(func(t *testing.T, in []byte, at int64) {
		if len(in) > IndexBlockLen {
			return
		}
		if _, _, err := DecodeIndexBlock(in, segID, base, at); len(in) < IndexBlockLen {
			require.Error(t, err)
		}
		blk := make([]byte, IndexBlockLen)
		copy(blk, in)
		es, next, err := DecodeIndexBlock(blk, segID, base, at)
		if err != nil {
			return
		}
		again := make([]byte, IndexBlockLen)
		binary.LittleEndian.PutUint32(again[BlockCountAt:], uint32(len(es)))
		binary.LittleEndian.PutUint64(again[BlockFirstAt:], es[0].Off)
		binary.LittleEndian.PutUint64(again[BlockNextAt:], uint64(next))
		for i, e := range es {
			EncodeEntry(again[IndexBlockHead+i*IndexEntryLen:], base, e)
		}
		binary.LittleEndian.PutUint32(again, BlockChecksum(segID, at, again[4:]))
		require.True(t, bytes.Equal(blk, again), "block re-encoded differs")
	})
}

// FuzzDurable: a DURABLE file decodes only if its words encode back to
// the same bytes (canonical over what it reads; the rest of the file is
// neither read nor written). The input is the file's first bytes, the
// rest zeros (a short input is also decoded as it is, and refused).
func FuzzDurable(f *testing.F) {
	good := make([]byte, DurableSize)
	EncodeDurable(good, Durable{Seq: 2, Base: 10, Pos: wal.DataStart + 64, Offset: 12, Open: 1})
	f.Add(good[:DurableOrder+8])
	f.Add(good[:20])
	swapped := bytes.Clone(good[:DurableOrder+8])
	for w := DurableSeq; w <= DurableOrder; w += 8 {
		binary.BigEndian.PutUint64(swapped[w:], binary.LittleEndian.Uint64(good[w:]))
	}
	f.Add(swapped)
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > DurableSize {
			return
		}
		if _, err := DecodeDurable(in); len(in) < DurableSize {
			require.Error(t, err)
		}
		b := make([]byte, DurableSize)
		copy(b, in)
		d, err := DecodeDurable(b)
		if err != nil {
			return
		}
		again := bytes.Clone(b)
		EncodeDurable(again, d)
		require.True(t, bytes.Equal(b, again), "words re-encoded differ")
	})
}
