package blockdev

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestRingReadOutlivesTheThreadThatSubmittedIt submits a read through
// the ring, lets the reader park, and then ends many of the process's
// threads (a goroutine that exits locked to its thread ends the
// thread), so that the thread which submitted the read is very likely
// among them. The kernel cancels an exiting thread's io_uring requests;
// the read must still return what pread returns, here the pipe's bytes.
func TestRingReadOutlivesTheThreadThatSubmittedIt(t *testing.T) {
	r := testRing(t, 8)
	rf, wf := ringPipe(t)
	want := make([]byte, 512)
	for i := range want {
		want[i] = byte(i*5 + 3)
	}
	type result struct {
		n   int
		err error
	}
	buf := make([]byte, 512)
	results := make(chan result, 1)
	go func() {
		n, err := r.readAt(rf, buf, 0)
		results <- result{n, err}
	}()
	waitParked(r)
	for range 256 {
		exited := make(chan struct{})
		go func() {
			runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
			close(exited)
		}()
		<-exited
	}
	_, err := wf.Write(want)
	require.NoError(t, err)
	res := <-results
	require.NoError(t, res.err)
	require.Equal(t, len(want), res.n)
	require.Equal(t, want, buf)
}
