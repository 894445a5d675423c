//go:build !linux

package blockdev

// WatchDir fails with ErrNoWatch: only Linux's inotify is used; callers
// poll elsewhere.
func WatchDir(path string, reads ...string) (<-chan struct{}, func(), error) {
	return nil, nil, ErrNoWatch
}
