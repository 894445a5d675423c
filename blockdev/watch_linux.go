package blockdev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// WatchDir returns a channel that is ready (events coalesced) after a
// file in the directory at path was written, created, renamed or
// removed, or after one of the files of the directory named in reads was
// read, and a function that stops watching. It uses inotify. The reads
// are watched on each named file, not on the directory, whose watch would
// report every read of every file in it; a named file that does not exist
// yet (or is replaced) is watched from the moment it appears.
func WatchDir(path string, reads ...string) (<-chan struct{}, func(), error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, nil, fmt.Errorf("inotify_init1: %w", err)
	}
	const mask = unix.IN_MODIFY | unix.IN_CREATE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_DELETE
	if _, err := unix.InotifyAddWatch(fd, path, mask); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("inotify_add_watch %s: %w", path, err)
	}
	watchReads := func(fd int, name string) error {
		_, err := unix.InotifyAddWatch(fd, filepath.Join(path, name), unix.IN_ACCESS)
		return err
	}
	for _, name := range reads {
		// A file that is not there is watched once its creation is seen.
		// Any other failure (the limit of watches reached) is the
		// caller's to report: its reads would wake nobody, and a caller
		// told so polls instead.
		if err := watchReads(fd, name); err != nil && !errors.Is(err, unix.ENOENT) {
			unix.Close(fd)
			return nil, nil, fmt.Errorf("inotify_add_watch %s: %w", filepath.Join(path, name), err)
		}
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: reads wait in Go's poller
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("inotify: %w", err)
	}
	ch := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 16<<10)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return // closed by stop
			}
			inotifyEvents(buf[:n], func(mask uint32, name string) {
				if mask&(unix.IN_CREATE|unix.IN_MOVED_TO) != 0 && slices.Contains(reads, name) {
					hook := watchHook.Load()
					if hook != nil {
						(*hook)("adding")
					}
					// Through the file, never the bare number: once stop
					// has closed it, Control fails instead of adding the
					// watch to whatever file now has that number.
					_ = rc.Control(func(fd uintptr) { _ = watchReads(int(fd), name) })
					if hook != nil {
						(*hook)("added")
					}
				}
			})
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	return ch, func() { f.Close() }, nil
}

// watchHook, if set (tests), runs before and after the watch of a named
// file that appeared is added ("adding", "added").
var watchHook atomic.Pointer[func(step string)]

// inotifyEvents calls fn with the mask and name (empty for an event of
// the watched file itself) of each whole event in b, as read from an
// inotify descriptor: a 16-byte header (watch descriptor, mask, cookie,
// name length, in native order) and the name, padded with NULs.
func inotifyEvents(b []byte, fn func(mask uint32, name string)) {
	for len(b) >= unix.SizeofInotifyEvent {
		mask := binary.NativeEndian.Uint32(b[4:8])
		n := int(binary.NativeEndian.Uint32(b[12:16]))
		b = b[unix.SizeofInotifyEvent:]
		if n < 0 || n > len(b) {
			return
		}
		name := b[:n]
		if i := slices.Index(name, 0); i >= 0 {
			name = name[:i]
		}
		fn(mask, string(name))
		b = b[n:]
	}
}
