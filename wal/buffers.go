package wal

import (
	"sync"
	"sync/atomic"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
)

// Buffers lends write buffers to writers in turn (Options.Buffers). A
// log has two writers at a time at most (the active segment's, and a
// retired one's until its seal is done), so four buffers serve every
// roll. The zero value is ready; a nil *Buffers allocates every buffer.
// Safe for concurrent use.
type Buffers struct {
	mu     sync.Mutex
	free   [][]byte // guarded by mu
	allocs atomic.Int64
	// lent, if set (tests), is called with each buffer put takes back,
	// before it is kept or dropped: a test fills it with a pattern that
	// no device write may then carry.
	lent func(buf []byte)
}

// buffersKept bounds the free buffers a Buffers holds: two writers'
// worth. A new writer may take one, then a retired one give back its two
// (its seal ending), before the new one takes its second at its first
// flush; with room for only two, one of the three was dropped and a later
// roll allocated again.
const buffersKept = 4

// Allocs is how many buffers it has allocated (the others were lent again).
func (b *Buffers) Allocs() int64 { return b.allocs.Load() }

// get lends a buffer of size bytes aligned for a: a free one if one fits,
// else a new one. Its bytes are what its last writer left.
func (b *Buffers) get(size int, a blockdev.Alignment) []byte {
	if b == nil {
		return a.Alloc(size)
	}
	b.mu.Lock()
	for i := len(b.free) - 1; i >= 0; i-- {
		if buf := b.free[i]; len(buf) == size && alignedbuf.IsSliceAligned(buf, a.Memory) {
			b.free = append(b.free[:i], b.free[i+1:]...)
			b.mu.Unlock()
			return buf
		}
	}
	b.mu.Unlock()
	b.allocs.Add(1)
	return a.Alloc(size)
}

// put takes buf back. If buffersKept are free already, it takes the
// place of one of another size (kept from writers of another MaxWrite: a
// segment resumed from an older file keeps the MaxWrite it was created
// with, so a log whose MaxWrite was changed had two such buffers squat
// two of the four places for good, and its rolls allocated again), else
// it is dropped.
func (b *Buffers) put(buf []byte) {
	if b == nil {
		return
	}
	if b.lent != nil {
		b.lent(buf)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.free) < buffersKept {
		b.free = append(b.free, buf)
		return
	}
	for i, f := range b.free {
		if len(f) != len(buf) {
			b.free[i] = buf
			return
		}
	}
}

// Kept is how many bytes of free buffers it holds.
func (b *Buffers) Kept() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	var n int64
	for _, f := range b.free {
		n += int64(len(f))
	}
	return n
}

// Release drops the free buffers (to the collector): the owner of b has
// closed every writer it lent to, and lends no more.
func (b *Buffers) Release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.free)
	b.free = nil
}
