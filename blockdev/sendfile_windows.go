package blockdev

import "golang.org/x/sys/windows"

// SendfileToTCP reports whether the standard library moves an *os.File
// to a TCP connection inside the kernel on this platform, so that an
// export counts as zero-copy. On Windows it uses TransmitFile on server
// editions only: client editions allow two at a time, so Go copies there.
func SendfileToTCP() bool { return windows.RtlGetVersion().ProductType != verNTWorkstation }

// verNTWorkstation is VER_NT_WORKSTATION, the product type of client
// editions.
const verNTWorkstation = 1
