package blockdev

import (
	"os"
	"unsafe"

	"golang.org/x/sys/windows"
)

// Map maps the first size bytes of f into memory, shared with the file:
// read-only, or, with writable, also for stores, which reach the file and
// every other mapping of it (in other processes too). The mapping stays
// valid after f is closed, until Unmap. While it exists Windows refuses
// to remove the file: OSDir.Remove moves it aside, and Unmap removes it.
func Map(f *os.File, size int, writable bool) ([]byte, error) {
	prot, access := uint32(windows.PAGE_READONLY), uint32(windows.FILE_MAP_READ)
	if writable {
		prot, access = windows.PAGE_READWRITE, windows.FILE_MAP_READ|windows.FILE_MAP_WRITE
	}
	// Through the handle's own reference (not Fd, which a concurrent
	// Close frees under the call).
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var h windows.Handle
	if cerr := rc.Control(func(fd uintptr) {
		h, err = windows.CreateFileMapping(windows.Handle(fd), nil, prot, uint32(uint64(size)>>32), uint32(size), nil)
	}); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, os.NewSyscallError("CreateFileMapping", err)
	}
	defer windows.CloseHandle(h) // the view keeps the mapping
	addr, err := windows.MapViewOfFile(h, access, 0, 0, uintptr(size))
	if err != nil {
		return nil, os.NewSyscallError("MapViewOfFile", err)
	}
	// addr is memory the Go runtime does not manage: reading it through
	// &addr keeps vet's check for pointers hidden in integers quiet.
	return unsafe.Slice((*byte)(*(*unsafe.Pointer)(unsafe.Pointer(&addr))), size), nil
}

// Unmap releases a mapping made by Map; b must be the whole slice Map
// returned, and nothing may touch it afterwards. Files moved aside while
// it was mapped are removed now if nothing else maps them.
func Unmap(b []byte) error {
	err := windows.UnmapViewOfFile(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
	removePending()
	if err != nil {
		return os.NewSyscallError("UnmapViewOfFile", err)
	}
	return nil
}

// AdviseSequential does nothing on Windows, which has no such advice for
// a mapped view.
func AdviseSequential(b []byte) {}
