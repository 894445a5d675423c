//go:build !linux && !freebsd

package blockdev

import "os"

// DropCache does nothing here: this platform has no posix_fadvise, and
// the pages an export read stay in the cache until the kernel reclaims
// them.
func DropCache(f *os.File, off, n int64) {}
