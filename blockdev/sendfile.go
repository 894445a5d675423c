//go:build linux || (darwin && !ios) || dragonfly || freebsd || solaris

package blockdev

// SendfileToTCP reports whether the standard library moves an *os.File
// to a TCP connection inside the kernel on this platform (io.Copy reaches
// sendfile(2) through net.TCPConn.ReadFrom), so that an export counts as
// zero-copy. It does here.
func SendfileToTCP() bool { return true }
