//go:build unix

package blockdev

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// statfs describes the filesystem holding path, or its directory if path
// does not exist yet.
func statfs(path string) (*unix.Statfs_t, error) {
	var st unix.Statfs_t
	err := unix.Statfs(path, &st)
	if errors.Is(err, unix.ENOENT) {
		err = unix.Statfs(filepath.Dir(path), &st)
	}
	if err != nil {
		return nil, fmt.Errorf("blockdev: statfs %s: %w", path, err)
	}
	return &st, nil
}
