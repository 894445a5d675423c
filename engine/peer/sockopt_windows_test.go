package peer

import "syscall"

// setSockBuf sets the socket option opt (SO_SNDBUF, SO_RCVBUF) of fd to n bytes.
func setSockBuf(fd uintptr, opt, n int) {
	_ = syscall.SetsockoptInt(syscall.Handle(fd), syscall.SOL_SOCKET, opt, n)
}
