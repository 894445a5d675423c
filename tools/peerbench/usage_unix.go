//go:build unix

package main

import (
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// childUsage records a finished child's peak memory and CPU time in r.
func childUsage(ps *os.ProcessState, r *Result) {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		r.MaxRSSKiB = ru.Maxrss // KiB on Linux
		r.UserS = time.Duration(ru.Utime.Nano()).Seconds()
		r.SysS = time.Duration(ru.Stime.Nano()).Seconds()
	}
}

// syncFilesystems writes back every dirty page (sync(2)).
func syncFilesystems() { unix.Sync() }
