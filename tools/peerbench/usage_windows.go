package main

import (
	"os"
	"syscall"
	"time"
)

// childUsage records a finished child's CPU time in r; Windows reports
// no peak memory here (MaxRSSKiB stays 0).
func childUsage(ps *os.ProcessState, r *Result) {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		r.UserS = time.Duration(filetimeNs(ru.UserTime)).Seconds()
		r.SysS = time.Duration(filetimeNs(ru.KernelTime)).Seconds()
	}
}

// filetimeNs is a FILETIME duration (100 ns units) in nanoseconds.
func filetimeNs(ft syscall.Filetime) int64 {
	return (int64(ft.HighDateTime)<<32 | int64(ft.LowDateTime)) * 100
}

// syncFilesystems does nothing: Windows has no sync(2), and the page
// cache cannot be dropped either (dropCaches reports that).
func syncFilesystems() {}
