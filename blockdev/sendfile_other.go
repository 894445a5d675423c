//go:build !(linux || (darwin && !ios) || dragonfly || freebsd || solaris || windows)

package blockdev

// SendfileToTCP reports whether the standard library moves an *os.File
// to a TCP connection inside the kernel on this platform, so that an
// export counts as zero-copy. It does not here: io.Copy copies through
// user space.
func SendfileToTCP() bool { return false }
