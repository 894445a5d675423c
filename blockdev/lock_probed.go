//go:build !linux || segstore_flock

package blockdev

import "time"

// probeTries bounds how often lockFile tries again while the lock is
// held, and probeWait is the pause between tries: where a query takes the
// lock for an instant (queryLock on macOS, the BSDs and Windows), a
// writer's open must not fail because a reader was looking. A real holder
// keeps it far longer than the tries last (about 50 ms).
const (
	probeTries = 50
	probeWait  = time.Millisecond
)

// retryWhileProbed runs try until it reports the lock free, an error, or
// probeTries tries have found it held.
func retryWhileProbed(try func() (held bool, err error)) (bool, error) {
	for i := 1; ; i++ {
		held, err := try()
		if !held || err != nil || i == probeTries {
			return held, err
		}
		time.Sleep(probeWait)
	}
}
