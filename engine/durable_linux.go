package engine

import "golang.org/x/sys/unix"

// noAtime opens the writer's wake-up descriptor of DURABLE so that its
// reads never update the file's access time.
const noAtime = unix.O_NOATIME
