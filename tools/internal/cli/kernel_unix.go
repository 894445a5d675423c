//go:build unix

package cli

import "golang.org/x/sys/unix"

// kernelRelease is the running kernel's release (uname -r); "" if
// unknown.
func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
