//go:build unix

package alignedbuf

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// MapPages returns n bytes of zeroed, page-aligned memory outside the Go
// heap (an anonymous private mapping), with len == cap. Release it with
// UnmapPages; the garbage collector never sees or frees it. It calls mmap
// directly: unix.Mmap records every mapping in a map under one lock,
// which 16 readers filling a cache at once queued on.
func MapPages(n int) ([]byte, error) {
	p, err := unix.MmapPtr(-1, 0, nil, uintptr(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
	if err != nil {
		return nil, err
	}
	return unsafe.Slice((*byte)(p), n), nil
}

// UnmapPages releases memory from MapPages. b must be the whole slice
// MapPages returned; nothing may use it afterwards.
func UnmapPages(b []byte) error {
	return unix.MunmapPtr(unsafe.Pointer(unsafe.SliceData(b)), uintptr(cap(b)))
}
