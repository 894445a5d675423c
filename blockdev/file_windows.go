package blockdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/ncw/directio"
	"golang.org/x/sys/windows"
)

// shareAll lets other opens read, write, rename and remove a file while
// it is open, as on Unix: the engine removes and renames segment files
// that readers still hold.
const shareAll = windows.FILE_SHARE_READ | windows.FILE_SHARE_WRITE | windows.FILE_SHARE_DELETE

// openFile opens path with flag (os.O_RDONLY or os.O_RDWR, maybe
// os.O_CREATE) and, if direct, ncw/directio's flags
// FILE_FLAG_NO_BUFFERING | FILE_FLAG_WRITE_THROUGH. It calls CreateFile
// itself rather than directio.OpenFile, which leaves out
// FILE_SHARE_DELETE (see shareAll).
func openFile(path string, flag int, perm os.FileMode, direct bool) (*os.File, error) {
	attrs := uint32(windows.FILE_ATTRIBUTE_NORMAL)
	if direct {
		attrs |= directio.FILE_FLAG_NO_BUFFERING | directio.FILE_FLAG_WRITE_THROUGH
	}
	return createFile(path, flag, attrs)
}

// createFile opens path for reading, or reading and writing with
// os.O_WRONLY or os.O_RDWR in flag, creating it with os.O_CREATE, shared
// with every other open (shareAll).
func createFile(path string, flag int, attrs uint32) (*os.File, error) {
	p, err := windows.UTF16PtrFromString(path)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	access := uint32(windows.GENERIC_READ)
	if flag&(os.O_WRONLY|os.O_RDWR) != 0 {
		access |= windows.GENERIC_WRITE
	}
	mode := uint32(windows.OPEN_EXISTING)
	if flag&os.O_CREATE != 0 {
		mode = windows.OPEN_ALWAYS
	}
	h, err := windows.CreateFile(p, access, shareAll, nil, mode, attrs, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(h), path), nil
}

// refusedDirect reports whether an open's error says the filesystem
// refuses unbuffered I/O, and the reason to show.
func refusedDirect(err error) (string, bool) {
	return "refused FILE_FLAG_NO_BUFFERING (ERROR_INVALID_PARAMETER on open)", errors.Is(err, windows.ERROR_INVALID_PARAMETER)
}

// filesystemOf names the filesystem of the volume holding path, in lower
// case ("ntfs", "refs", "fat32", ...).
func filesystemOf(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("blockdev: volume of %s: %w", path, err)
	}
	p, err := windows.UTF16PtrFromString(abs)
	if err != nil {
		return "", fmt.Errorf("blockdev: volume of %s: %w", path, err)
	}
	root := make([]uint16, windows.MAX_PATH+1)
	if err := windows.GetVolumePathName(p, &root[0], uint32(len(root))); err != nil {
		return "", fmt.Errorf("blockdev: GetVolumePathName %s: %w", path, err)
	}
	name := make([]uint16, windows.MAX_PATH+1)
	if err := windows.GetVolumeInformation(&root[0], nil, 0, nil, nil, nil, &name[0], uint32(len(name))); err != nil {
		return "", fmt.Errorf("blockdev: GetVolumeInformation %s: %w", windows.UTF16ToString(root), err)
	}
	return strings.ToLower(windows.UTF16ToString(name)), nil
}

// fileStorageInfo is FILE_STORAGE_INFO.
type fileStorageInfo struct {
	LogicalBytesPerSector                                 uint32
	PhysicalBytesPerSectorForAtomicity                    uint32
	PhysicalBytesPerSectorForPerformance                  uint32
	FileSystemEffectivePhysicalBytesPerSectorForAtomicity uint32
	Flags                                                 uint32
	ByteOffsetForSectorAlignment                          uint32
	ByteOffsetForPartitionAlignment                       uint32
}

// directAlignment asks the volume (GetFileInformationByHandleEx,
// FileStorageInfo): unbuffered transfers must cover whole logical
// sectors, from buffers aligned to the physical sector, which is also the
// unit the device writes atomically.
func directAlignment(f *os.File, path, fsName string) (Alignment, error) {
	var info fileStorageInfo
	err := windows.GetFileInformationByHandleEx(windows.Handle(f.Fd()), windows.FileStorageInfo, (*byte)(unsafe.Pointer(&info)), uint32(unsafe.Sizeof(info)))
	if err != nil {
		return Alignment{}, fmt.Errorf("blockdev: sector size of %s (FileStorageInfo): %w", path, err)
	}
	logical := int(info.LogicalBytesPerSector)
	physical := int(info.FileSystemEffectivePhysicalBytesPerSectorForAtomicity)
	if physical < logical {
		physical = logical
	}
	return finishAlignment(physical, logical, physical, "FileStorageInfo")
}

// syncCall names datasync in errors.
const syncCall = "FlushFileBuffers"

// datasync is FlushFileBuffers: it writes the file's data and metadata
// and flushes the drive's cache.
func datasync(fd uintptr) error { return windows.FlushFileBuffers(windows.Handle(fd)) }

// Allocate sets the size to cover the range (SetEndOfFile): Windows
// reserves the clusters, and the added range reads as zeros.
func (d *File) Allocate(off, n int64) error { return d.extendTo(off + n) }
