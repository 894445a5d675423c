package engine_test

import (
	"os"
	"syscall"
)

// openDirect opens name for reading with O_DIRECT (a baseline's reader).
func openDirect(name string) (*os.File, error) {
	return os.OpenFile(name, os.O_RDONLY|syscall.O_DIRECT, 0)
}
