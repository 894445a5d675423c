package layout

import "encoding/binary"

// DURABLE is the file through which a store's writer tells read-only logs
// in other processes of the same machine how far its active segment is
// acknowledged. Both sides map it shared and use its words with atomic
// loads and stores, which work on the machine's own byte order: so,
// unlike every other file of a store, its words are native endian (an
// atomic load cannot byte-swap, and a reader that copied and converted
// the words would lose the sequence lock's guarantee). The file holds no
// durable data (without a live writer it is ignored), is never exported,
// served or imported (peers and imports move only segment files), and a
// directory copied to another machine brings a DURABLE that only a live
// writer there would give a meaning, by writing it anew.
//
//	0        8        16       24       32       40       48       56            4095
//	+--------+--------+--------+--------+--------+--------+--------+---- - - ----+------+
//	| magic  | seq    | base   | pos    | offset | open   | order  |             | wake |   "segdur01"; native-endian u64 words
//	+--------+--------+--------+--------+--------+--------+--------+---- - - ----+------+
//
// seq is a sequence lock: odd while the writer updates base, pos and
// offset (its active segment, and that segment's acknowledged end as a
// file position and as a record offset); open is 1 while a writer has the
// log open. order is DurableOrderMark as its writer stored it: a process
// of the other byte order (an emulated one, or a directory moved between
// machines while a writer lives) reads it swapped and trusts none of the
// words. wake is the byte the writer reads after each update and writes
// at its close, so that readers watching the file (inotify) wake; its
// value means nothing. The bytes between order and wake are unused.
const (
	DurableMagic  = "segdur01"
	DurableSize   = 4096
	DurableSeq    = 8
	DurableBase   = 16
	DurablePos    = 24
	DurableOffset = 32
	DurableOpen   = 40
	DurableOrder  = 48
	// DurableWakeAt is the wake byte, away from the words.
	DurableWakeAt = DurableSize - 1
	// DurableOrderMark reads the same only in the byte order that stored
	// it.
	DurableOrderMark = 0x0102030405060708
)

const durableFormat = "DURABLE"

// Durable is one reading of DURABLE's words.
type Durable struct {
	Seq, Base, Pos, Offset, Open uint64
}

// EncodeDurable writes the magic, d's words and the order mark, in this
// machine's byte order, into b (at least DurableSize bytes), leaving its
// other bytes as they are. A writer of the live file stores the words one
// at a time with atomic stores instead; this is their layout.
func EncodeDurable(b []byte, d Durable) {
	_ = b[DurableSize-1]
	copy(b, DurableMagic)
	binary.NativeEndian.PutUint64(b[DurableSeq:], d.Seq)
	binary.NativeEndian.PutUint64(b[DurableBase:], d.Base)
	binary.NativeEndian.PutUint64(b[DurablePos:], d.Pos)
	binary.NativeEndian.PutUint64(b[DurableOffset:], d.Offset)
	binary.NativeEndian.PutUint64(b[DurableOpen:], d.Open)
	binary.NativeEndian.PutUint64(b[DurableOrder:], DurableOrderMark)
}

// DecodeDurable reads the words of b, a copy of a DURABLE file, in this
// machine's byte order. It refuses a file too short, without the magic,
// or whose order mark is not this machine's (written in the other byte
// order, or by a writer from before the mark, or not yet): none of its
// words can then be trusted. It does not judge the words: an odd seq is
// an update in progress, which a reader of the live file retries.
func DecodeDurable(b []byte) (Durable, error) {
	if len(b) < DurableSize {
		return Durable{}, errorf(durableFormat, int64(len(b)), "DURABLE of %d bytes, want %d", len(b), DurableSize)
	}
	if string(b[:8]) != DurableMagic {
		return Durable{}, errorf(durableFormat, 0, "not a segstore DURABLE file")
	}
	if o := binary.NativeEndian.Uint64(b[DurableOrder:]); o != DurableOrderMark {
		return Durable{}, errorf(durableFormat, DurableOrder, "DURABLE's order mark %#016x is not this machine's %#016x: its words are not in this byte order", o, uint64(DurableOrderMark))
	}
	return Durable{
		Seq: binary.NativeEndian.Uint64(b[DurableSeq:]), Base: binary.NativeEndian.Uint64(b[DurableBase:]),
		Pos: binary.NativeEndian.Uint64(b[DurablePos:]), Offset: binary.NativeEndian.Uint64(b[DurableOffset:]),
		Open: binary.NativeEndian.Uint64(b[DurableOpen:]),
	}, nil
}
