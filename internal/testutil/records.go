package testutil

import "encoding/binary"

// Record returns the deterministic content of record n, size bytes long:
// n in its first 8 bytes (little endian; left out of a record shorter
// than 8 bytes), then a filler derived from n and the position. Tests
// regenerate it to check what they read back byte for byte: a read that
// returns another record's bytes, or damaged ones, differs from it.
func Record(n uint64, size int) []byte {
	b := make([]byte, size)
	var period [256]byte
	for i := range period {
		period[i] = byte(n*131 + uint64(i)*7 + 1)
	}
	fillPeriod(b, 0, &period)
	if size >= 8 {
		binary.LittleEndian.PutUint64(b, n)
	}
	return b
}

// Labelled returns size bytes of fill with label written over their start
// (cut to size): a record that says what it is when it is printed.
func Labelled(label string, fill byte, size int) []byte {
	b := make([]byte, size)
	var period [256]byte
	for i := range period {
		period[i] = fill
	}
	fillPeriod(b, 0, &period)
	copy(b, label)
	return b
}

// Stamped returns a record of size bytes that names its origin: the
// appender a, its batch seq and the record's place j in that batch, as
// three little-endian 32-bit words in its first 12 bytes (cut to size),
// then a filler derived from all three. A child process reports (a, seq)
// for each acknowledged batch and the parent regenerates every record of
// it from that alone.
func Stamped(size, a, seq, j int) []byte {
	b := make([]byte, size)
	var period [256]byte
	for k := range period {
		period[k] = byte(a ^ seq*3 ^ j*5 ^ k)
	}
	fillPeriod(b, 12, &period)
	var stamp [12]byte
	binary.LittleEndian.PutUint32(stamp[0:], uint32(a))
	binary.LittleEndian.PutUint32(stamp[4:], uint32(seq))
	binary.LittleEndian.PutUint32(stamp[8:], uint32(j))
	copy(b, stamp[:])
	return b
}

// FillXor sets b[i] = byte(i) ^ x for every i from from on: a filler that
// differs with x and with the position.
func FillXor(b []byte, from int, x byte) {
	var period [256]byte
	for i := range period {
		period[i] = byte(i) ^ x
	}
	fillPeriod(b, from, &period)
}

// fillPeriod sets b[i] = period[i%256] for every i from from on. It
// copies the period rather than storing byte by byte: the race detector
// checks a copy once and each store of a loop, which made generating and
// checking records a large part of some tests' time under -race.
func fillPeriod(b []byte, from int, period *[256]byte) {
	for i := from; i < len(b); {
		i += copy(b[i:], period[i&255:])
	}
}
