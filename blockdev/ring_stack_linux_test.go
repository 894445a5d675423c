package blockdev

import (
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// growStack uses about depth KiB of the goroutine's stack and returns,
// leaving the stack large and mostly unused, so that a collection
// shrinks it (copying it elsewhere).
//
//go:noinline
func growStack(depth int) byte {
	var pad [1024]byte
	pad[depth%len(pad)] = byte(depth)
	if depth == 0 {
		return pad[0]
	}
	return growStack(depth-1) + pad[depth%len(pad)]
}

// TestRingReadIntoAStackBuffer reads through the ring into an array on
// the reader's own stack while collections shrink that stack. The read
// is from a pipe, so that it stays in flight until the test writes. The
// bytes must land in the reader's array: if the array stayed on the
// stack, the stack was copied away while the kernel held its old
// address, and the kernel wrote into freed stack memory. (Under -race
// the array is not kept on the stack in the first place, so only a plain
// build shows the fault.)
func TestRingReadIntoAStackBuffer(t *testing.T) {
	r := testRing(t, 8)
	rf, wf := ringPipe(t)
	want := make([]byte, 512)
	for i := range want {
		want[i] = byte(i*7 + 1)
	}
	type result struct {
		n   int
		err error
		got [512]byte
	}
	results := make(chan result, 1)
	var sink atomic.Int32
	go func() {
		sink.Store(int32(growStack(512)))
		var a [512]byte
		n, err := r.readAt(rf, a[:], 0)
		results <- result{n, err, a}
	}()
	waitParked(r)
	for range 4 {
		runtime.GC()
	}
	_, err := wf.Write(want)
	require.NoError(t, err)
	res := <-results
	require.NoError(t, res.err)
	require.Equal(t, len(want), res.n)
	require.Equal(t, want, res.got[:], "the kernel's bytes are in the reader's buffer")
}
