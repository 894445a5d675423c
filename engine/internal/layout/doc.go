// Package layout holds the engine's own on-disk formats as pure code: the
// metadata file that carries START and MANIFEST, the START and MANIFEST
// payloads, the two versions of a sealed segment's footer (the engine's
// bytes inside the wal's footer frame) and the DURABLE file. Each format
// has its byte diagram above its codec, its wire facts as named
// constants, encoders that write into a caller's buffer or return one, and
// decoders that take bytes and return a value or an *Error saying what is
// wrong and at which byte.
//
// Nothing here opens a file, holds a lock, logs or knows a segment: the
// engine reads and writes the files, wraps the errors with the file, the
// segment and the position, and decides what recovery does. Every length
// read from the input is checked against the bytes that remain before
// anything is allocated for it, and no input makes a decoder panic.
//
// Every integer is little endian, except in DURABLE: that file is a
// shared mapping read and written with atomic loads and stores by
// processes of one machine, so its words are in the machine's own byte
// order (see durable.go); it is never exported or copied to a peer.
package layout

import (
	"fmt"
	"hash/crc32"
)

// castagnoli is the CRC-32C table of every checksum in these formats.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Error is what a decoder found wrong with its input: the format, the
// byte of the input (not of the file the input came from: the caller
// knows where that starts) where the fault is, and what is wrong there.
type Error struct {
	Format string // "metadata file", "START", "manifest", "footer", "DURABLE"
	Offset int64  // byte of the decoder's input at which the fault is
	Reason string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s (byte %d of the %s)", e.Reason, e.Offset, e.Format)
}

func errorf(format string, off int64, reason string, args ...any) *Error {
	return &Error{Format: format, Offset: off, Reason: fmt.Sprintf(reason, args...)}
}

// zeroBytes reports whether b holds only zeros.
func zeroBytes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// firstNonZero is the index of b's first non-zero byte, or -1.
func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}
