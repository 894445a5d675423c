package blockdev

import "golang.org/x/sys/unix"

// noAtime opens a writable SharedMapping's read descriptor so that its
// reads never update the file's access time.
const noAtime = unix.O_NOATIME
