// Package blockdev is segstore's device seam: every byte the engine stores
// goes through a Device. Production code opens a File (O_DIRECT, or the
// explicit buffered fallback); tests and users who want to rehearse failures
// use a Sim, which can lose unsynced writes, tear them at sector granularity,
// fail operations with EIO, flip bits and misdirect writes.
//
// The seam is deliberately small: positioned reads and writes of aligned
// blocks, a data sync, and size management. Callers never reach for package
// os for segment data.
package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/segstore/segstore/alignedbuf"
)

// SectorSize is the smallest unit of storage this package assumes the device
// writes atomically (all-or-nothing after a power loss), in bytes. 512 is the
// smallest logical block size any Linux block device reports; devices with
// larger sectors are at least as atomic. The simulated device tears writes at
// this granularity (or its Offset alignment if larger).
const SectorSize = 512

// Device is a file-like store of bytes addressed by offset.
//
// ReadAt and WriteAt require the buffer address, the offset and the length to
// be multiples of Alignment().Memory, .Offset and .Offset respectively; a call
// that is not returns an *AlignmentError (errors.Is(err, ErrMisaligned))
// without touching the device. ReadAt past the end returns the bytes that
// exist and io.EOF. WriteAt past the end extends the device (the gap reads as
// zeros).
//
// Durability: a write is only guaranteed to survive a crash after a later
// Sync returns nil. A Sync error means some writes since the previous
// successful Sync may be lost; callers must not retry Sync and treat the data
// as safe (see package wal: errors are sticky).
//
// ReadAt, WriteAt and Sync may be called concurrently. Truncate, Allocate and
// Close must not race with I/O to the affected range.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable (fdatasync).
	Sync() error
	// Allocate reserves space for [off, off+n), extending Size if needed. The
	// reserved range reads as zeros until written.
	Allocate(off, n int64) error
	// Truncate sets the size; bytes past it are gone, bytes added read as zeros.
	Truncate(size int64) error
	// Size is the current size in bytes.
	Size() (int64, error)
	// Alignment is what ReadAt and WriteAt require, and how it was found.
	Alignment() Alignment
	// Direct reports whether I/O bypasses the page cache (O_DIRECT).
	Direct() bool
	// Name identifies the device in errors (a path, or "sim:<name>").
	Name() string
	// File returns the underlying open file, or nil for devices that have
	// none (Sim). Zero-copy readers use it to open their own descriptors or
	// to learn the path; they must not close it.
	File() *os.File
	Close() error
}

// Alignment describes the I/O granularity of a device, in bytes. All values
// are powers of two.
type Alignment struct {
	// Memory is the required alignment of a buffer's address.
	Memory int
	// Offset is the required alignment of offsets and lengths.
	Offset int
	// Block is the preferred write unit (the filesystem block / physical
	// sector size): writers that rewrite less than a Block make the device
	// read-modify-write. Block >= Offset.
	Block int
	// Source says where the values came from: "statx", "sysfs", "probe",
	// "buffered" or "sim".
	Source string
}

func (a Alignment) String() string {
	return fmt.Sprintf("mem=%d off=%d block=%d (%s)", a.Memory, a.Offset, a.Block, a.Source)
}

// Alloc returns a zeroed buffer of n bytes aligned for this device.
func (a Alignment) Alloc(n int) []byte { return alignedbuf.MustAlloc(n, max(a.Memory, a.Offset)) }

func (a Alignment) valid() bool {
	return alignedbuf.IsPowerOfTwo(a.Memory) && alignedbuf.IsPowerOfTwo(a.Offset) &&
		alignedbuf.IsPowerOfTwo(a.Block) && a.Block >= a.Offset
}

var (
	// ErrMisaligned: a ReadAt or WriteAt whose buffer address, offset or
	// length does not meet the device's Alignment. The *AlignmentError says
	// which and by how much. It is a programming error in the caller.
	ErrMisaligned = errors.New("blockdev: misaligned direct I/O")
	// ErrDirectIOUnsupported: the filesystem refuses O_DIRECT or does not
	// honour it (tmpfs). The *UnsupportedError names the filesystem; set
	// Options.Buffered to use the buffered fallback.
	ErrDirectIOUnsupported = errors.New("blockdev: filesystem does not support direct I/O")
	// ErrInjected marks errors injected by a Sim; they also match syscall.EIO.
	ErrInjected = errors.New("blockdev: injected fault")
	// ErrCrashed: the Sim was crashed; every later operation on it fails.
	ErrCrashed = errors.New("blockdev: simulated device crashed")
)

// AlignmentError reports a misaligned ReadAt or WriteAt.
type AlignmentError struct {
	Op     string // "read" or "write"
	Device string
	Addr   uintptr // buffer address
	Off    int64
	Len    int
	Need   Alignment
}

func (e *AlignmentError) Error() string {
	var what string
	switch {
	case !alignedbuf.IsAligned(int64(e.Addr), int64(e.Need.Memory)):
		what = fmt.Sprintf("buffer address %#x is not a multiple of %d", e.Addr, e.Need.Memory)
	case !alignedbuf.IsAligned(e.Off, int64(e.Need.Offset)):
		what = fmt.Sprintf("offset %d is not a multiple of %d", e.Off, e.Need.Offset)
	default:
		what = fmt.Sprintf("length %d is not a multiple of %d", e.Len, e.Need.Offset)
	}
	return fmt.Sprintf("blockdev: %s %s at offset %d length %d: %s (allocate buffers with alignedbuf or Alignment.Alloc)",
		e.Op, e.Device, e.Off, e.Len, what)
}

func (e *AlignmentError) Unwrap() error { return ErrMisaligned }

// checkAligned returns an *AlignmentError if p or off do not meet a.
func checkAligned(op, dev string, a Alignment, p []byte, off int64) error {
	addr := alignedbuf.Addr(p)
	if (len(p) == 0 || alignedbuf.IsAligned(int64(addr), int64(a.Memory))) &&
		alignedbuf.IsAligned(off, int64(a.Offset)) &&
		alignedbuf.IsAligned(int64(len(p)), int64(a.Offset)) && off >= 0 {
		return nil
	}
	if off < 0 {
		return fmt.Errorf("blockdev: %s %s: negative offset %d", op, dev, off)
	}
	return &AlignmentError{Op: op, Device: dev, Addr: addr, Off: off, Len: len(p), Need: a}
}

// UnsupportedError reports a filesystem that cannot be used with O_DIRECT.
type UnsupportedError struct {
	Path   string
	FS     string // filesystem name, e.g. "tmpfs"
	Reason string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("blockdev: %s is on %s, which %s; use a disk-backed filesystem (ext4, xfs) or set Options.Buffered to accept the buffered fallback",
		e.Path, e.FS, e.Reason)
}

func (e *UnsupportedError) Unwrap() error { return ErrDirectIOUnsupported }
