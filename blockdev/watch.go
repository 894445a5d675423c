package blockdev

import "errors"

// ErrNoWatch: WatchDir cannot watch a directory on this platform (it
// has no inotify); the caller polls instead.
var ErrNoWatch = errors.New("blockdev: no directory watch on this platform (inotify is Linux's)")
