package layout

import (
	"encoding/binary"
	"hash/crc32"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/wal"
)

// Footer version 2, the engine's bytes in the wal footer frame of a file
// of wal format version 3 and later, little endian. The index entries are
// kept in 4 KiB blocks that start at 4 KiB file positions, each with its
// own checksum, so a reader can fetch and verify one block without
// reading the footer; a summary (each block's first offset and time) and
// a trailer end the footer, so the file's last bytes describe it:
//
//	footer:  0        4        8
//	         +--------+--------+--- - - ---+------- - - -------+---------- - -+----------+
//	         |version | flags  | zero pad   | blocks × 4096     | summary       | trailer  |
//	         +--------+--------+--- - - ---+------- - - -------+---------- - -+----------+
//	                             (to a 4 KiB file position)      blocks × (first offset | first time)
//
//	trailer: 0        4        8                16               24      28       32       36       40       44      48
//	         +--------+--------+----------------+----------------+-------+--------+--------+--------+--------+-------+
//	         |version | flags  | record count   | data end (pos) |interv.|entries | blocks | blocksAt (u64)  | crc32c|
//	         +--------+--------+----------------+----------------+-------+--------+--------+--------+--------+-------+
//
//	block:   0        4        8                16               24               32
//	         +--------+--------+----------------+----------------+----------------+---- - ----------------+-- - --+
//	         | crc32c | count  | first offset   | next position  | reserved (0)   | count × entry (32 B)   | zeros |
//	         +--------+--------+----------------+----------------+----------------+---- - ----------------+-- - --+
//
//	entry:   0                8                16       20       24       28       32
//	         +----------------+----------------+--------+--------+--------+--------+
//	         | position       | time (ns)      |off−base| back   | before | left   |
//	         +----------------+----------------+--------+--------+--------+--------+
//
// The head's and the trailer's version are 2, their flags written as
// zeros and not read; the pad is zeros (checked). A summary slot is a
// block's first offset (uint64) and time (int64). The trailer holds the
// segment's record count (uint64), where its records end (uint64: the
// footer frame's position), the index interval, the entries and blocks
// (uint32 each; blocks = ⌈entries/127⌉), and where the first block starts
// (uint64). A block holds 1 to 127 entries; its first offset is its first
// entry's; its next position is where the record of its last entry ends
// at the latest: the next block's first entry's position, or the data
// end; its reserved word and the bytes after its entries, to 4096, are
// zeros (checked). A block's crc32c covers
// the segment id (8 bytes), the block's file position (8 bytes) and block
// bytes [4, 4096); the trailer's covers the segment id, the trailer's
// file position, trailer bytes [0, 44) and the summary. The wal frame's
// checksum covers the whole footer as well.
const (
	FooterV2Version  = 2
	FooterHeadLen    = 8
	FooterTrailerLen = 48
	SummaryEntryLen  = 16
	IndexBlockLen    = 4096
	IndexBlockHead   = 32
	IndexEntryLen    = 32
	EntriesPerBlock  = (IndexBlockLen - IndexBlockHead) / IndexEntryLen // 127

	// Where an entry's fields are, from the entry's first byte.
	EntryPos    = 0  // uint64
	EntryTime   = 8  // int64
	EntryRel    = 16 // uint32: offset less the segment's base
	EntryBack   = 20 // uint32
	EntryBefore = 24 // uint32
	EntryLeft   = 28 // uint32

	// Where a block's head fields are.
	BlockCountAt = 4  // uint32
	BlockFirstAt = 8  // uint64
	BlockNextAt  = 16 // uint64

	// MaxFooterPos bounds the footer frame position a decoder takes, far
	// beyond any segment, so that no sum of positions and lengths wraps.
	MaxFooterPos = 1 << 56
)

// FooterV2Size is the size of a version 2 footer of n entries whose frame
// is at dataEnd, and where its blocks start.
func FooterV2Size(dataEnd int64, n int) (size int, blocksAt int64) {
	payload := dataEnd + wal.FrameHeaderLen
	blocksAt = alignedbuf.AlignUp(payload+FooterHeadLen, IndexBlockLen)
	nb := (n + EntriesPerBlock - 1) / EntriesPerBlock
	return int(blocksAt-payload) + nb*(IndexBlockLen+SummaryEntryLen) + FooterTrailerLen, blocksAt
}

// FooterV2Fits is how many entries a version 2 footer holds in a footer
// frame of at most batch payload bytes, wherever it starts.
func FooterV2Fits(batch int) int {
	room := batch - wal.FooterTailLen - FooterHeadLen - (IndexBlockLen - wal.FrameAlign) - FooterTrailerLen
	return max(room/(IndexBlockLen+SummaryEntryLen), 0) * EntriesPerBlock
}

// EncodeEntry writes e, of the segment at base, into b (at least
// IndexEntryLen bytes).
func EncodeEntry(b []byte, base uint64, e IndexEntry) {
	_ = b[IndexEntryLen-1]
	binary.LittleEndian.PutUint64(b[EntryPos:], uint64(e.Pos))
	binary.LittleEndian.PutUint64(b[EntryTime:], uint64(e.Time))
	binary.LittleEndian.PutUint32(b[EntryRel:], uint32(e.Off-base))
	binary.LittleEndian.PutUint32(b[EntryBack:], e.Back)
	binary.LittleEndian.PutUint32(b[EntryBefore:], e.Before)
	binary.LittleEndian.PutUint32(b[EntryLeft:], e.Left)
}

// DecodeEntry returns the entry encoded at the start of b, of the segment
// at base; the zero entry if b is shorter than an entry. It checks
// nothing: entries are checked with their block (CheckBlock), and this is
// how a reader reads one in a checked block.
func DecodeEntry(b []byte, base uint64) IndexEntry {
	if len(b) < IndexEntryLen {
		return IndexEntry{}
	}
	return IndexEntry{Pos: int64(binary.LittleEndian.Uint64(b[EntryPos:])), Time: int64(binary.LittleEndian.Uint64(b[EntryTime:])),
		Off: base + uint64(binary.LittleEndian.Uint32(b[EntryRel:])), Back: binary.LittleEndian.Uint32(b[EntryBack:]),
		Before: binary.LittleEndian.Uint32(b[EntryBefore:]), Left: binary.LittleEndian.Uint32(b[EntryLeft:])}
}

// BlockChecksum is the checksum of an index block or trailer at file
// position pos of the file with identity segID, over parts.
func BlockChecksum(segID uint64, pos int64, parts ...[]byte) uint32 {
	var seed [16]byte
	binary.LittleEndian.PutUint64(seed[0:], segID)
	binary.LittleEndian.PutUint64(seed[8:], uint64(pos))
	c := crc32.Update(0, castagnoli, seed[:])
	for _, p := range parts {
		c = crc32.Update(c, castagnoli, p)
	}
	return c
}

// EncodeFooterV2 returns the version 2 footer of the segment with
// identity segID at base whose count records end at dataEnd (where the
// footer frame goes), with the entries index at interval.
func EncodeFooterV2(segID, base, count uint64, dataEnd, interval int64, index []IndexEntry) []byte {
	size, blocksAt := FooterV2Size(dataEnd, len(index))
	payload := dataEnd + wal.FrameHeaderLen
	b := make([]byte, size)
	binary.LittleEndian.PutUint32(b[0:], FooterV2Version)
	nb := (len(index) + EntriesPerBlock - 1) / EntriesPerBlock
	sum := b[blocksAt-payload+int64(nb*IndexBlockLen):]
	for k := range nb {
		blk := b[blocksAt-payload+int64(k*IndexBlockLen):][:IndexBlockLen]
		part := index[k*EntriesPerBlock : min(len(index), (k+1)*EntriesPerBlock)]
		next := dataEnd
		if k+1 < nb {
			next = index[(k+1)*EntriesPerBlock].Pos
		}
		binary.LittleEndian.PutUint32(blk[BlockCountAt:], uint32(len(part)))
		binary.LittleEndian.PutUint64(blk[BlockFirstAt:], part[0].Off)
		binary.LittleEndian.PutUint64(blk[BlockNextAt:], uint64(next))
		for i, e := range part {
			EncodeEntry(blk[IndexBlockHead+i*IndexEntryLen:], base, e)
		}
		binary.LittleEndian.PutUint32(blk[0:], BlockChecksum(segID, blocksAt+int64(k*IndexBlockLen), blk[4:]))
		binary.LittleEndian.PutUint64(sum[SummaryEntryLen*k:], part[0].Off)
		binary.LittleEndian.PutUint64(sum[SummaryEntryLen*k+8:], uint64(part[0].Time))
	}
	tr := b[size-FooterTrailerLen:]
	binary.LittleEndian.PutUint32(tr[0:], FooterV2Version)
	binary.LittleEndian.PutUint64(tr[8:], count)
	binary.LittleEndian.PutUint64(tr[16:], uint64(dataEnd))
	binary.LittleEndian.PutUint32(tr[24:], uint32(interval))
	binary.LittleEndian.PutUint32(tr[28:], uint32(len(index)))
	binary.LittleEndian.PutUint32(tr[32:], uint32(nb))
	binary.LittleEndian.PutUint64(tr[36:], uint64(blocksAt))
	binary.LittleEndian.PutUint32(tr[44:], BlockChecksum(segID, payload+int64(size-FooterTrailerLen), tr[:44], sum[:SummaryEntryLen*nb]))
	return b
}

// Summary is what a segment keeps in memory of a version 2 footer: the
// trailer's facts and each block's first offset and time.
type Summary struct {
	Count    uint64 // records
	DataEnd  int64
	Interval int64
	Entries  int
	BlocksAt int64
	First    []BlockFirst
}

// BlockFirst is a summary slot: an index block's first offset and time.
type BlockFirst struct {
	Off  uint64
	Time int64
}

// DecodeSummary checks the trailer and summary at the end of b, the last
// bytes of a version 2 footer (at least the trailer and summary; all of
// it, or its end) of the segment at base with identity segID, whose
// footer frame is at pos with next offset next and whose footer is size
// bytes. Offsets in its errors count from the start of b.
func DecodeSummary(b []byte, size int, segID, base, next uint64, pos int64) (*Summary, error) {
	if pos < wal.DataStart || pos > MaxFooterPos {
		return nil, errorf(footerFormat, 0, "footer frame at byte %d, outside any segment", pos)
	}
	payload := pos + wal.FrameHeaderLen
	if len(b) < FooterTrailerLen || size%wal.FrameAlign != 0 || len(b) > size {
		return nil, errorf(footerFormat, 0, "footer of %d bytes cannot be a version 2 footer", size)
	}
	at := len(b) - FooterTrailerLen // the trailer, in b
	tr := b[at:]
	sm := &Summary{Count: binary.LittleEndian.Uint64(tr[8:]), DataEnd: int64(binary.LittleEndian.Uint64(tr[16:])),
		Interval: int64(binary.LittleEndian.Uint32(tr[24:])), Entries: int(binary.LittleEndian.Uint32(tr[28:])),
		BlocksAt: int64(binary.LittleEndian.Uint64(tr[36:]))}
	nb := int(binary.LittleEndian.Uint32(tr[32:]))
	want, wantAt := FooterV2Size(pos, sm.Entries)
	switch {
	case binary.LittleEndian.Uint32(tr[0:]) != FooterV2Version:
		return nil, errorf(footerFormat, int64(at), "footer trailer version %d, want %d", binary.LittleEndian.Uint32(tr[0:]), FooterV2Version)
	case want != size || sm.BlocksAt != wantAt || nb != (sm.Entries+EntriesPerBlock-1)/EntriesPerBlock:
		return nil, errorf(footerFormat, int64(at+28), "footer of %d bytes claims %d entries in %d blocks from byte %d", size, sm.Entries, nb, sm.BlocksAt)
	case len(b) < FooterTrailerLen+SummaryEntryLen*nb:
		return nil, errorf(footerFormat, 0, "footer summary of %d blocks is not in the %d bytes read", nb, len(b))
	case base+sm.Count != next:
		return nil, errorf(footerFormat, int64(at+8), "footer counts %d records from %d, the frame says the next offset is %d", sm.Count, base, next)
	case sm.DataEnd != pos:
		return nil, errorf(footerFormat, int64(at+16), "footer says records end at %d, the footer frame is at %d", sm.DataEnd, pos)
	case sm.Interval <= 0:
		return nil, errorf(footerFormat, int64(at+24), "footer index interval %d", sm.Interval)
	case (sm.Count == 0) != (sm.Entries == 0):
		return nil, errorf(footerFormat, int64(at+28), "footer of %d records has %d index entries", sm.Count, sm.Entries)
	}
	sumAt := at - SummaryEntryLen*nb
	sum := b[sumAt:at]
	if got, want := BlockChecksum(segID, payload+int64(size-FooterTrailerLen), tr[:44], sum), binary.LittleEndian.Uint32(tr[44:]); got != want {
		return nil, errorf(footerFormat, int64(at+44), "footer trailer checksum %#08x, want %#08x", got, want)
	}
	sm.First = make([]BlockFirst, nb)
	for k := range sm.First {
		sm.First[k] = BlockFirst{Off: binary.LittleEndian.Uint64(sum[SummaryEntryLen*k:]), Time: int64(binary.LittleEndian.Uint64(sum[SummaryEntryLen*k+8:]))}
		if sm.First[k].Off < base || sm.First[k].Off >= next || (k > 0 && (sm.First[k].Off <= sm.First[k-1].Off || sm.First[k].Time < sm.First[k-1].Time)) {
			return nil, errorf(footerFormat, int64(sumAt+SummaryEntryLen*k), "footer summary slot %d (offset %d) is out of order or range", k, sm.First[k].Off)
		}
	}
	if nb > 0 && sm.First[0].Off != base {
		return nil, errorf(footerFormat, int64(sumAt), "footer index does not start at the first record")
	}
	return sm, nil
}

// DecodeFooterV2 checks a whole version 2 footer b of the segment at base
// with identity segID, whose footer frame is at pos with next offset
// next, and returns its entries and interval: the trailer and summary,
// every block, and entries that ascend inside the segment's record range.
func DecodeFooterV2(b []byte, segID, base, next uint64, pos int64) (index []IndexEntry, interval int64, err error) {
	sm, err := WalkFooterV2(b, segID, base, next, pos, func(part []IndexEntry) { index = append(index, part...) })
	if err != nil {
		return nil, 0, err
	}
	return index, sm.Interval, nil
}

// WalkFooterV2 checks a whole version 2 footer as DecodeFooterV2 does and
// returns its summary, handing each block's entries to each (if not nil)
// in order: a caller that keeps only the summary holds one block's
// entries at a time.
func WalkFooterV2(b []byte, segID, base, next uint64, pos int64, each func([]IndexEntry)) (*Summary, error) {
	sm, err := DecodeSummary(b, len(b), segID, base, next, pos)
	if err != nil {
		return nil, err
	}
	payload := pos + wal.FrameHeaderLen
	if i := firstNonZero(b[FooterHeadLen : sm.BlocksAt-payload]); i >= 0 {
		return nil, errorf(footerFormat, int64(FooterHeadLen+i), "footer padding before its index blocks (bytes %d to %d) is not zero", payload+FooterHeadLen, sm.BlocksAt)
	}
	var prev *IndexEntry
	for k := range sm.First {
		at := sm.BlocksAt + int64(k*IndexBlockLen)
		part, err := sm.CheckBlock(b[at-payload:][:IndexBlockLen], k, segID, base, next, prev)
		if err != nil {
			if e, ok := err.(*Error); ok {
				e.Offset += at - payload // from the block's start to the footer's
			}
			return nil, err
		}
		if k > 0 {
			if prevNext := int64(binary.LittleEndian.Uint64(b[at-IndexBlockLen-payload+BlockNextAt:])); prevNext != part[0].Pos {
				return nil, errorf(footerFormat, at-IndexBlockLen-payload+BlockNextAt, "index block %d says the next block starts at byte %d, it starts at %d", k-1, prevNext, part[0].Pos)
			}
		}
		prev = &part[len(part)-1]
		if each != nil {
			each(part)
		}
	}
	return sm, nil
}

// CheckBlock decodes index block k of the footer sm describes, blk (read
// from its file position), and checks it: its own checksum and head, that
// it agrees with its summary slot (first offset and time, entry count; the
// last block's next position is the data end), and that its entries
// ascend (from prev, the previous block's last entry, if known) inside
// the segment's record range. A lone block read through a cache is
// checked the same way as a block of a whole footer. Offsets in its
// errors count from the block's start.
func (sm *Summary) CheckBlock(blk []byte, k int, segID, base, next uint64, prev *IndexEntry) ([]IndexEntry, error) {
	if k < 0 || k >= len(sm.First) {
		return nil, errorf(footerFormat, 0, "index block %d of a footer of %d blocks", k, len(sm.First))
	}
	at := sm.BlocksAt + int64(k*IndexBlockLen)
	part, bnext, err := DecodeIndexBlock(blk, segID, base, at)
	if err != nil {
		return nil, err
	}
	first := sm.First[k]
	last := k+1 == len(sm.First)
	if want := min(EntriesPerBlock, sm.Entries-k*EntriesPerBlock); len(part) != want || part[0].Off != first.Off || part[0].Time != first.Time || (last && bnext != sm.DataEnd) || bnext > sm.DataEnd {
		return nil, errorf(footerFormat, BlockCountAt, "index block %d at byte %d (%d entries from offset %d) disagrees with the summary (%d from %d)", k, at, len(part), part[0].Off, want, first.Off)
	}
	for j := range part {
		e, i := part[j], k*EntriesPerBlock+j
		if j > 0 {
			prev = &part[j-1]
		}
		if e.Off < base || e.Off >= next || e.Pos < wal.DataStart+wal.FrameHeaderLen || e.Pos >= sm.DataEnd ||
			int64(e.Back) > e.Pos-wal.DataStart || uint64(e.Before) > e.Off-base || e.Left == 0 ||
			(prev != nil && (e.Off <= prev.Off || e.Pos <= prev.Pos || e.Time < prev.Time)) {
			return nil, errorf(footerFormat, int64(IndexBlockHead+j*IndexEntryLen), "footer index entry %d (offset %d at %d) is out of order or range", i, e.Off, e.Pos)
		}
	}
	if k == 0 && (part[0].Pos != wal.DataStart+wal.FrameHeaderLen || part[0].Before != 0) {
		return nil, errorf(footerFormat, IndexBlockHead, "footer index does not start at the first record")
	}
	return part, nil
}

// DecodeIndexBlock checks the index block blk, read from file position at
// of the file with identity segID at base, and returns its entries and
// its next position. Offsets in its errors count from the block's start.
func DecodeIndexBlock(blk []byte, segID, base uint64, at int64) ([]IndexEntry, int64, error) {
	if len(blk) < IndexBlockLen {
		return nil, 0, errorf(footerFormat, int64(len(blk)), "index block at byte %d: %d bytes, want %d", at, len(blk), IndexBlockLen)
	}
	blk = blk[:IndexBlockLen]
	if got, want := BlockChecksum(segID, at, blk[4:]), binary.LittleEndian.Uint32(blk[0:]); got != want {
		return nil, 0, errorf(footerFormat, 0, "index block at byte %d: checksum %#08x, want %#08x", at, got, want)
	}
	n := int(binary.LittleEndian.Uint32(blk[BlockCountAt:]))
	if n == 0 || n > EntriesPerBlock {
		return nil, 0, errorf(footerFormat, BlockCountAt, "index block at byte %d claims %d entries", at, n)
	}
	if i := firstNonZero(blk[24:IndexBlockHead]); i >= 0 {
		return nil, 0, errorf(footerFormat, int64(24+i), "index block at byte %d: reserved bytes, or those after its %d entries, are not zero", at, n)
	}
	if i := firstNonZero(blk[IndexBlockHead+n*IndexEntryLen:]); i >= 0 {
		return nil, 0, errorf(footerFormat, int64(IndexBlockHead+n*IndexEntryLen+i), "index block at byte %d: reserved bytes, or those after its %d entries, are not zero", at, n)
	}
	out := make([]IndexEntry, n)
	for i := range out {
		out[i] = DecodeEntry(blk[IndexBlockHead+i*IndexEntryLen:], base)
	}
	next := int64(binary.LittleEndian.Uint64(blk[BlockNextAt:]))
	if out[0].Off != binary.LittleEndian.Uint64(blk[BlockFirstAt:]) || next <= out[n-1].Pos {
		return nil, 0, errorf(footerFormat, BlockFirstAt, "index block at byte %d: its head (offset %d, next position %d) disagrees with its entries", at, binary.LittleEndian.Uint64(blk[BlockFirstAt:]), next)
	}
	return out, next, nil
}
