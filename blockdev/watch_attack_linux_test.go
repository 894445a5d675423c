package blockdev

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// inotifyWatches counts the watches of the inotify descriptor fd (its
// fdinfo has one "inotify wd:" line per watch).
func inotifyWatches(t *testing.T, fd int) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("/proc/self/fdinfo", itoa(fd)))
	require.NoError(t, err)
	return strings.Count(string(b), "inotify wd:")
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(es)
}

// waitGoroutines waits until at most n goroutines run; a wedge detector
// (two minutes), not a speed.
func waitGoroutines(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); runtime.NumGoroutine() > n; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, want at most %d:\n%s", runtime.NumGoroutine(), n, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
	}
}

// TestWatchDirLeavesNothingBehind: 100 watches started, woken by the
// named file's creation, a read and a replacement, and stopped leave no
// descriptor and no goroutine behind.
func TestWatchDirLeavesNothingBehind(t *testing.T) {
	dir := t.TempDir()
	goroutines, fds := runtime.NumGoroutine(), openFDs(t)
	for i := range 100 {
		changes, stop, err := WatchDir(dir, "NAMED")
		require.NoError(t, err)
		name := filepath.Join(dir, "NAMED")
		if i%2 == 0 {
			require.NoError(t, os.WriteFile(name+".tmp", []byte("x"), 0o644))
			require.NoError(t, os.Rename(name+".tmp", name))
		} else {
			require.NoError(t, os.Remove(name))
			require.NoError(t, os.WriteFile(name, []byte("x"), 0o644))
		}
		<-changes
		b, err := os.ReadFile(name)
		require.NoError(t, err)
		require.Equal(t, "x", string(b))
		stop()
	}
	waitGoroutines(t, goroutines)
	require.Equal(t, fds, openFDs(t), "descriptors open")
}

// TestWatchDirAddsNoWatchToADescriptorReused: a watch stopped while its
// goroutine is about to watch a named file that just appeared adds that
// watch to nothing; it used to add it through the bare descriptor
// number, which the stop had closed and the process could have given to
// another inotify instance (or any file) in between: the watch landed in
// that other instance, which then woke at every read of the file.
func TestWatchDirAddsNoWatchToADescriptorReused(t *testing.T) {
	dir := t.TempDir()
	reused, added, stops := make(chan int, 1), make(chan struct{}), make(chan func(), 1)
	hook := func(step string) {
		if step == "added" {
			close(added)
			return
		}
		(<-stops)()
		fd, err := unix.InotifyInit1(unix.IN_CLOEXEC) // the lowest free number: the one just closed
		if err != nil {
			panic(err)
		}
		reused <- fd
	}
	watchHook.Store(&hook)
	defer watchHook.Store(nil)
	_, stop, err := WatchDir(dir, "NAMED")
	require.NoError(t, err)
	stops <- stop
	require.NoError(t, os.WriteFile(filepath.Join(dir, "NAMED"), []byte("x"), 0o644))
	var fd int
	select {
	case fd = <-reused:
	case <-time.After(2 * time.Minute): // a wedge, not a speed
		t.Fatal("the watch never saw the file appear")
	}
	defer unix.Close(fd)
	select {
	case <-added:
	case <-time.After(2 * time.Minute): // a wedge, not a speed
		t.Fatal("the watch's add never ended")
	}
	require.Zero(t, inotifyWatches(t, fd), "watches another inotify instance got from a stopped watch")
}

// TestWatchDirReportsANamedFileItCannotWatch: a named file whose watch
// cannot be added for another reason than its absence (here a symbolic
// link to itself; the limit of watches reached is the same case) fails
// WatchDir, so that its caller says so and polls, instead of a watch
// whose reads of that file wake nobody.
func TestWatchDirReportsANamedFileItCannotWatch(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.Symlink("LOOP", filepath.Join(dir, "LOOP")))
	fds := openFDs(t)
	_, _, err := WatchDir(dir, "LOOP")
	require.ErrorIs(t, err, unix.ELOOP)
	require.Equal(t, fds, openFDs(t), "descriptors left open")

	changes, stop, err := WatchDir(dir, "ABSENT")
	require.NoError(t, err, "a file not there yet is watched once it appears")
	stop()
	require.NotNil(t, changes)
}
