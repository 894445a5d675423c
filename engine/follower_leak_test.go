package engine

import (
	"context"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFollowersLeaveNothingBehind: 100 read-only logs opened beside a
// live writer, each kept refreshed until it has seen the writer's next
// append (woken by the writer's read of DURABLE alone: polling every
// hour), then stopped and closed, leave no descriptor (inotify ones
// included, with their watches) and no goroutine behind.
func TestFollowersLeaveNothingBehind(t *testing.T) {
	path := t.TempDir()
	writer := realLog(t, path)
	defer writer.Close()
	_, err := writer.Append([]byte("first"))
	require.NoError(t, err)
	fds := func() int {
		es, err := os.ReadDir("/proc/self/fd")
		require.NoError(t, err)
		return len(es)
	}
	goroutines, open := runtime.NumGoroutine(), fds()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a wedge, not a speed
	defer cancel()
	for i := range 100 {
		r := readerOf(t, path)
		kctx, kstop := context.WithCancel(ctx)
		kept := make(chan error, 1)
		go func() { kept <- r.KeepRefreshed(kctx, time.Hour) }()
		off, err := writer.Append([]byte("next"))
		require.NoError(t, err)
		require.NoError(t, r.Wait(ctx, off), "follower %d", i)
		kstop()
		require.ErrorIs(t, <-kept, context.Canceled)
		require.NoError(t, r.Close())
	}
	for deadline := time.Now().Add(2 * time.Minute); runtime.NumGoroutine() > goroutines; {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), goroutines, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
	}
	require.Equal(t, open, fds(), "descriptors open")
}

// TestFollowerWakesForANewDurableFile: a follower polling every hour
// (so woken only by file events and the writer's reads of DURABLE)
// follows a writer whose DURABLE did not exist when the follower began
// watching, or was removed after the follower had mapped and watched it
// (the next writer then creates another file): it sees every append the
// new writer acknowledges. (Passes before and after the remap of a
// replaced DURABLE: beside the old words of a closed log it saw them too,
// and more; TestAReaderFollowsAReplacedDurableFile shows the more.)
func TestFollowerWakesForANewDurableFile(t *testing.T) {
	for _, tc := range []struct {
		name        string
		mappedFirst bool // the follower maps DURABLE before it is removed
	}{
		{name: "none when the follower starts"},
		{name: "removed after the follower mapped it", mappedFirst: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := t.TempDir()
			w := realLog(t, path)
			_, err := w.Append([]byte("first"))
			require.NoError(t, err)
			if !tc.mappedFirst {
				require.NoError(t, w.Close())
				require.NoError(t, os.Remove(path+"/"+durableName))
			}
			r := readerOf(t, path)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a wedge, not a speed
			defer cancel()
			kctx, kstop := context.WithCancel(ctx)
			kept := make(chan error, 1)
			go func() { kept <- r.KeepRefreshed(kctx, time.Hour) }()
			if tc.mappedFirst {
				require.NoError(t, r.Wait(ctx, 0))
				require.NoError(t, w.Close())
				require.NoError(t, os.Remove(path+"/"+durableName))
			}
			w = realLog(t, path)
			defer w.Close()
			for i := range 50 {
				off, err := w.Append([]byte("record"), []byte("another"))
				require.NoError(t, err)
				require.NoError(t, r.Wait(ctx, off+1), "append %d", i)
				require.LessOrEqual(t, r.EndOffset(), w.DurableOffset(), "append %d", i)
			}
			kstop()
			require.ErrorIs(t, <-kept, context.Canceled)
		})
	}
}

// TestKeepRefreshedRefusesAnIntervalThatIsNoInterval: an interval of zero
// or less is refused with an error that says what to pass (the ticker it
// makes panicked on it).
func TestKeepRefreshedRefusesAnIntervalThatIsNoInterval(t *testing.T) {
	path := t.TempDir()
	w := realLog(t, path)
	defer w.Close()
	r := readerOf(t, path)
	for _, interval := range []time.Duration{0, -time.Second} {
		err := r.KeepRefreshed(context.Background(), interval)
		require.ErrorContains(t, err, "interval", "interval %v", interval)
	}
}
