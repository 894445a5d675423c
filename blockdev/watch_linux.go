package blockdev

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// WatchDir returns a channel that is ready (events coalesced) after a
// file in the directory at path was written, created, renamed or
// removed, and a function that stops watching. It uses inotify.
func WatchDir(path string) (<-chan struct{}, func(), error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("inotify_init1: %w", err)
	}
	const mask = unix.IN_MODIFY | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE
	if _, err := unix.InotifyAddWatch(fd, path, mask); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("inotify_add_watch %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: reads wait in Go's poller
	ch := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 16<<10)
		for {
			if _, err := f.Read(buf); err != nil {
				return // closed by stop
			}
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, func() { f.Close() }, nil
}
