package engine

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// residentPages counts the pages of the file at path in the page cache.
func residentPages(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	require.NoError(t, err)
	defer unix.Munmap(data)
	vec := make([]byte, (len(data)+os.Getpagesize()-1)/os.Getpagesize())
	_, _, errno := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&data[0])), uintptr(len(data)), uintptr(unsafe.Pointer(&vec[0])))
	require.Zero(t, errno, "mincore: %v", errno)
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// TestExportDropCache: an export reads through the page cache; with
// ExportDropCache the exported range leaves it when WriteTo returns. (To a
// socket, pages still referenced by unacknowledged sends stay until the
// advice at Close, or until the kernel reclaims them: it is advice.)
func TestExportDropCache(t *testing.T) {
	for _, drop := range []bool{false, true} {
		t.Run(fmt.Sprint("drop=", drop), func(t *testing.T) {
			path := t.TempDir()
			opts := DefaultOptions()
			opts.SegmentSize, opts.MaxWrite, opts.Logger, opts.ExportDropCache = 256<<10, 64<<10, quiet, drop
			l, err := Open(path, opts)
			require.NoError(t, err)
			defer l.Close()
			fillSegments(t, l, 1)
			info := l.Segments()[0]
			file := filepath.Join(path, info.File)
			require.Zero(t, residentPages(t, file), "O_DIRECT writes leave nothing in the page cache")
			v, err := l.OpenSegment(info.Base)
			require.NoError(t, err)
			defer v.Close()
			var buf bytes.Buffer
			_, err = v.WriteTo(&buf)
			require.NoError(t, err)
			if drop {
				assert.Zero(t, residentPages(t, file))
			} else {
				assert.Positive(t, residentPages(t, file))
			}
		})
	}
}
