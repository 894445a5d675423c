//go:build unix

package blockdev

import (
	"fmt"
	"os"
)

// SyncDir fsyncs a directory, the commit point of a create, rename or remove
// inside it.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("blockdev: sync dir: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("blockdev: fsync directory %s: %w", dir, err)
	}
	return nil
}
