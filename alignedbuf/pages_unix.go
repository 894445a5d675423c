//go:build unix

package alignedbuf

import "golang.org/x/sys/unix"

// MapPages returns n bytes of zeroed, page-aligned memory outside the Go
// heap (an anonymous private mapping), with len == cap. Release it with
// UnmapPages; the garbage collector never sees or frees it.
func MapPages(n int) ([]byte, error) {
	return unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANON)
}

// UnmapPages releases memory from MapPages. b must be the whole slice
// MapPages returned; nothing may use it afterwards.
func UnmapPages(b []byte) error { return unix.Munmap(b) }
