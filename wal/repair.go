package wal

import (
	"encoding/binary"
	"hash/crc32"
	"math/bits"
)

// A CRC is linear: for two messages of the same length, the XOR of their
// checksums depends only on the XOR of the messages. So the difference
// between a frame's stored and computed checksum (its syndrome) tells
// whether a single flipped bit explains the damage, and which bit, without
// trying each one: the syndrome of a flip of bit b of the byte k bytes before
// the end of the message is the raw CRC of that byte followed by k zero
// bytes. Walking the syndrome back one zero byte at a time and comparing it
// with the eight one-byte syndromes finds k and b in one pass. For messages
// shorter than CRC-32C's period (far longer than any frame) the syndromes of
// single-bit flips are all different, so the answer is unique.

// crcByteOf[v>>24] is the byte x whose table entry has that top byte: the
// inverse of one step of the table-driven CRC.
var crcByteOf = func() (inv [256]byte) {
	for x := 0; x < 256; x++ {
		inv[castagnoli[x]>>24] = byte(x)
	}
	return inv
}()

// crcUnstep undoes one zero byte of a raw, reflected CRC-32C register:
// c' = T[c&0xff] ^ c>>8, where the top byte of c' is the top byte of T[x]
// (c>>8 has a zero top byte) and every table entry's top byte is distinct.
func crcUnstep(c uint32) uint32 {
	x := crcByteOf[c>>24]
	return (c^castagnoli[x])<<8 | uint32(x)
}

// singleBitFlip reports where in the frame whose message is checksummed as
// frameChecksum(segID, pos, headerTail, payload) a single flipped bit
// explains a stored checksum of want: the byte's index in the frame (0-3 the
// checksum itself, then header bytes and payload) and the bit, or ok false.
func singleBitFlip(segID uint64, pos int64, headerTail, payload []byte, want uint32) (at int, bit uint, ok bool) {
	got := frameChecksum(segID, pos, headerTail, payload)
	syn := got ^ want
	if syn == 0 {
		return 0, 0, false
	}
	if bits.OnesCount32(syn) == 1 { // the stored checksum lost the bit
		b := uint(bits.TrailingZeros32(syn))
		var le [4]byte
		binary.LittleEndian.PutUint32(le[:], 1<<b)
		for i, v := range le {
			if v != 0 {
				return i, uint(bits.TrailingZeros8(v)), true
			}
		}
	}
	var one [8]uint32 // the syndrome of each bit of the last byte
	for b := range one {
		one[b] = crc32.Update(0, castagnoli, []byte{1 << b}) ^ crc32.Update(0, castagnoli, []byte{0})
	}
	n := len(headerTail) + len(payload) // bytes that are frame bytes, counted from the end
	for k := 0; k < n; k++ {
		for b, s := range one {
			if s == syn {
				return 4 + n - 1 - k, uint(b), true
			}
		}
		syn = crcUnstep(syn)
	}
	return 0, 0, false
}
