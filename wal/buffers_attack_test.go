package wal

import (
	"bytes"
	"fmt"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// poison fills a buffer handed back to a Buffers: a device write that
// carries it wrote from a buffer its writer no longer owned.
var poison = bytes.Repeat([]byte("LENT-BUF"), 8)

// poisonCheck is a device that records each write carrying the poison.
type poisonCheck struct {
	blockdev.Device
	mu  sync.Mutex
	hit []string
}

func (d *poisonCheck) WriteAt(p []byte, off int64) (int, error) {
	if i := bytes.Index(p, poison); i >= 0 {
		d.mu.Lock()
		d.hit = append(d.hit, fmt.Sprintf("the write at %d of %d bytes carries a lent buffer at %d", off, len(p), i))
		d.mu.Unlock()
	}
	return d.Device.WriteAt(p, off)
}

func (d *poisonCheck) hits() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.hit
}

// withWedgeDetector runs f and fails with every goroutine's stack if it
// has not returned within two minutes: a wedge, not a speed.
func withWedgeDetector(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); f() }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
		t.Fatalf("wedged:\n%s", b.String())
	}
}

// TestLentBuffersAreNeverWrittenAgain: a chain of writers shares one
// Buffers, each one's first appends taking the buffers of those before
// while its predecessor is closed or sealed (as a roll seals the retired
// segment beside the new one's appends) by a goroutine racing that
// predecessor's own appenders, in every sync mode, some writers failing
// their Nth write or sync. Every buffer handed back is filled with a
// pattern at once; no device write ever carries it. Every append a
// writer acknowledged reads back exact if the writer closed or sealed
// without error (and in SyncAlways mode, whatever happened after).
func TestLentBuffersAreNeverWrittenAgain(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncNever} {
		t.Run(fmt.Sprint("mode ", mode), func(t *testing.T) {
			withWedgeDetector(t, func() { lentBuffersChain(t, mode) })
		})
	}
}

type chainedWriter struct {
	w     *Writer
	sim   *blockdev.Sim
	dev   *poisonCheck
	mu    sync.Mutex
	acked map[uint64][][]byte // first offset -> the records acknowledged
	half  chan struct{}       // closed once an appender is half way
	done  sync.WaitGroup      // its appenders
	err   error               // of its Close or Seal
}

func lentBuffersChain(t *testing.T, mode SyncMode) {
	var bufs Buffers
	var lent atomic.Int64
	bufs.lent = func(b []byte) {
		lent.Add(1)
		for i := 0; i+len(poison) <= len(b); i += len(poison) {
			copy(b[i:], poison)
		}
	}
	const writers, appenders, perAppender = 8, 4, 60
	var chain []*chainedWriter
	for i := range writers {
		sim := newSim(uint64(100 + i))
		c := &chainedWriter{sim: sim, dev: &poisonCheck{Device: sim}, acked: map[uint64][][]byte{}, half: make(chan struct{})}
		var err error
		c.w, err = Create(c.dev, 0, Options{MaxWrite: 64 << 10, SyncMode: mode, SyncInterval: time.Millisecond, Buffers: &bufs})
		require.NoError(t, err)
		switch i % 4 {
		case 1:
			sim.FailNth(blockdev.OpWrite, sim.Calls(blockdev.OpWrite)+3)
		case 3:
			sim.FailNth(blockdev.OpSync, sim.Calls(blockdev.OpSync)+4)
		}
		var halfOnce sync.Once
		for a := range appenders {
			c.done.Add(1)
			go func() {
				defer c.done.Done()
				defer halfOnce.Do(func() { close(c.half) })
				for k := range perAppender {
					if k == perAppender/2 {
						halfOnce.Do(func() { close(c.half) })
					}
					n := 1 + (a+k)%5
					recs := make([][]byte, n)
					for j := range recs {
						recs[j] = testutil.Record(uint64(i<<20|a<<12|k<<4|j), 1+(a*7919+k*104729+j*31)%3000)
					}
					first, err := c.w.Append(recs...)
					if err != nil {
						return // closed or failed: not acknowledged
					}
					c.mu.Lock()
					c.acked[first] = recs
					c.mu.Unlock()
				}
			}()
		}
		chain = append(chain, c)
		if i == 0 {
			continue
		}
		// The one before is closed or sealed half way through its
		// appends, while this one's appenders take their first buffers.
		p := chain[i-1]
		<-p.half
		if (i-1)%2 == 0 {
			p.err = p.w.Close()
		} else {
			_, p.err = p.w.Seal([]byte("footer"))
		}
		p.done.Wait()
	}
	last := chain[len(chain)-1]
	last.done.Wait()
	last.err = last.w.Close()

	require.Positive(t, lent.Load(), "buffers were handed back")
	for i, c := range chain {
		require.Empty(t, c.dev.hits(), "writer %d", i)
		if i%4 == 1 || i%4 == 3 {
			require.Error(t, c.err, "writer %d: its device failed", i)
		}
		if c.err != nil && mode != SyncAlways {
			continue // what it acknowledged was in its buffer only
		}
		got, _, err := tryReadAll(c.sim)
		if c.err != nil && err != nil {
			continue // a failed seal may leave a footer torn: the scanner's business
		}
		require.NoError(t, err, "writer %d", i)
		for first, recs := range c.acked {
			for j, r := range recs {
				require.Equal(t, r, got[first+uint64(j)], "writer %d (closed with %v): offset %d", i, c.err, first+uint64(j))
			}
		}
	}
}

// TestBuffersMakeRoomForTheSizeInUse: with every place taken by buffers
// of another size (writers of an older MaxWrite), a buffer of the size
// now in use takes the place of one of them and is lent again; one more
// of a size already kept everywhere is dropped. Kept counts the bytes
// held, Release lets them all go.
func TestBuffersMakeRoomForTheSizeInUse(t *testing.T) {
	a := blockdev.Alignment{Memory: 512, Offset: 512, Block: 4096}
	var b Buffers
	for range buffersKept {
		b.put(a.Alloc(64 << 10))
	}
	b.put(a.Alloc(64 << 10))
	require.Equal(t, int64(buffersKept*64<<10), b.Kept(), "one more of the size kept everywhere is dropped")
	newer := a.Alloc(128 << 10)
	b.put(newer)
	got := b.get(128<<10, a)
	require.Zero(t, b.Allocs(), "the buffer of the size in use was kept")
	require.Same(t, &newer[0], &got[0])
	require.Equal(t, int64((buffersKept-1)*64<<10), b.Kept())
	b.Release()
	require.Zero(t, b.Kept())
}
