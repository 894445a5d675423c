package blockdev

import (
	"os"

	"golang.org/x/sys/windows"
)

var procReOpenFile = windows.NewLazySystemDLL("kernel32.dll").NewProc("ReOpenFile")

// Reopen opens the file f holds again, read-only and buffered, with a
// file position of its own: ReOpenFile makes a new handle to the very
// file f holds, whatever happened to its name since.
func Reopen(f *os.File) (*os.File, error) {
	if err := procReOpenFile.Find(); err != nil {
		return nil, err
	}
	h, _, err := procReOpenFile.Call(f.Fd(), windows.GENERIC_READ, shareAll, 0)
	if windows.Handle(h) == windows.InvalidHandle {
		return nil, &os.PathError{Op: "ReOpenFile", Path: f.Name(), Err: err}
	}
	return os.NewFile(h, f.Name()), nil
}
