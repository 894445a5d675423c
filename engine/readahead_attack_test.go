package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// errInjected is the read error flakyDir's devices return.
var errInjected = errors.New("injected read error")

// flakyDir's devices fail one read in every `every` while every is set.
type flakyDir struct {
	blockdev.Dir
	every atomic.Int64
	n     atomic.Int64
}

func (d *flakyDir) Open(name string, opts blockdev.Options) (blockdev.Device, error) {
	dev, err := d.Dir.Open(name, opts)
	if err != nil {
		return nil, err
	}
	return &flakyDevice{Device: dev, d: d}, nil
}

type flakyDevice struct {
	blockdev.Device
	d *flakyDir
}

func (f *flakyDevice) ReadAt(p []byte, off int64) (int, error) {
	if e := f.d.every.Load(); e > 0 && f.d.n.Add(1)%e == 0 {
		return 0, errInjected
	}
	return f.Device.ReadAt(p, off)
}

// TestReadAheadUnderAttack: more sequential readers than the log follows
// streams, interleaved with random readers, over a small cache that
// evicts, while the log appends, rolls, truncates both ends and its
// devices fail reads; record sizes around the index interval and wider
// than a read-ahead span. Every read returns its own offset's bytes (of
// one of the generations written there) or an allowed error; Close leaves
// no read-ahead goroutine or chunk. Records of 1.5 MiB (about 2 minutes
// under -race) run with SEGSTORE_LONG=1.
func TestReadAheadUnderAttack(t *testing.T) {
	sizes := []int{300, 4096 - 8, 4096, 4096 + 1}
	if testutil.Long() {
		sizes = append(sizes, 3<<20/2)
	}
	for _, size := range sizes {
		for _, cacheBytes := range []int64{64 << 10, 64 << 20} {
			for _, flaky := range []int64{0, 97} {
				t.Run(fmt.Sprintf("size=%d/cache=%d/flaky=%d", size, cacheBytes, flaky), func(t *testing.T) {
					readAheadAttack(t, size, cacheBytes, flaky)
				})
			}
		}
	}
	// Segments of format version 2, read ahead by whole frames (their own
	// reservations and give-backs), with failing reads.
	for _, size := range []int{300, 4096 + 1} {
		t.Run(fmt.Sprintf("version=2/size=%d/cache=%d/flaky=%d", size, 64<<10, 97), func(t *testing.T) {
			formatVersion = 2
			defer func() { formatVersion = 0 }()
			readAheadAttack(t, size, 64<<10, 97)
		})
	}
}

func readAheadAttack(t *testing.T, size int, cacheBytes, flaky int64) {
	d := &flakyDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{})}
	o := testOptions(d)
	o.SegmentSize, o.MaxWrite, o.CacheBytes = 1<<20, 256<<10, cacheBytes
	if size > 256<<10 {
		o.SegmentSize, o.MaxWrite = 8<<20, 2<<20
	}
	l, err := Open("sim", o)
	require.NoError(t, err)
	gens := make(map[uint64]byte) // highest gen written per offset, under gmu
	var gmu sync.Mutex
	appendRecs := func(n int, g byte) {
		gmu.Lock()
		defer gmu.Unlock()
		first := l.EndOffset()
		recs := make([][]byte, n)
		for k := range recs {
			gens[first+uint64(k)] = max(gens[first+uint64(k)], g)
			recs[k] = freshRecord(first+uint64(k), size, g)
		}
		_, err := l.Append(recs...)
		require.NoError(t, err)
	}
	budget := 6 << 20 / size
	reads := min(200, budget*2)
	for range max(budget/2, 8) {
		appendRecs(1, 0)
	}
	var bad atomic.Value
	check := func(off uint64, got []byte, err error) bool {
		if err != nil {
			if !errors.Is(err, ErrOutOfRange) && !errors.Is(err, ErrClosed) && !errors.Is(err, errInjected) {
				bad.CompareAndSwap(nil, fmt.Sprintf("read %d: %v", off, err))
			}
			return false
		}
		gmu.Lock()
		hi := gens[off]
		gmu.Unlock()
		for g := byte(0); g <= hi; g++ {
			if string(got) == string(freshRecord(off, size, g)) {
				return true
			}
		}
		bad.CompareAndSwap(nil, fmt.Sprintf("read %d: wrong bytes %q", off, got[:min(len(got), 24)]))
		return true
	}
	d.every.Store(flaky)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var once sync.Once
	halt := func() { once.Do(func() { close(stop) }); wg.Wait() }
	defer halt()
	for r := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				from := l.StartOffset()
				if end := l.EndOffset(); end > from {
					from += rng.Uint64N(end - from)
				}
				for off, k := from, 0; k < reads; off, k = off+1, k+1 {
					if r == 5 { // a random reader
						off = l.StartOffset() + rng.Uint64N(max(l.EndOffset()-l.StartOffset(), 1))
					}
					got, err := l.Read(off, nil)
					check(off, got, err)
					if err != nil {
						break
					}
				}
			}
		}()
	}
	for i := range 30 {
		d.every.Store(0) // the changes' own reads do not fail: the readers' do
		appendRecs(1+i%3*min(1, 4096/size), 0)
		switch i % 6 {
		case 1:
			require.NoError(t, l.Roll())
		case 3:
			if end := l.EndOffset(); end > l.StartOffset()+4 {
				require.NoError(t, l.TruncateBack(end-3))
				for range 3 {
					appendRecs(1, byte(i))
				}
			}
		case 5:
			if segs := l.Segments(); len(segs) > 2 {
				require.NoError(t, l.TruncateFront(segs[1].Base))
			}
		}
		d.every.Store(flaky)
		runtime.Gosched()
	}
	halt()
	d.every.Store(0)
	if b := bad.Load(); b != nil {
		t.Fatal(b)
	}
	// Before Close: once the read-ahead goroutines are done and the
	// streams let go of their chunks, every reservation is back (one kept
	// by a failed read, a truncation or a replaced stream would shrink the
	// bound for good, and stop read-ahead once it reached it).
	l.ra.wg.Wait()
	l.ra.reset()
	requireNoReservation(t, l)
	require.NoError(t, l.Close())
	requireNoReadAhead(t, l)
	requireNoReservation(t, l)
}

// requireNoReservation fails unless no byte of l's read-ahead bound, nor of
// any stream's, is reserved.
func requireNoReservation(t *testing.T, l *Log) {
	t.Helper()
	require.Zero(t, l.ra.held.Load(), "read-ahead bytes still reserved")
	for i := range l.ra.streams {
		require.Zero(t, l.ra.streams[i].held.Load(), "read-ahead bytes still reserved by stream %d", i)
	}
}

// requireNoReadAhead fails unless no stream of l (closed) runs a read-ahead
// goroutine or holds a chunk.
func requireNoReadAhead(t *testing.T, l *Log) {
	t.Helper()
	l.ra.mu.Lock()
	defer l.ra.mu.Unlock()
	for i := range l.ra.streams {
		st := &l.ra.streams[i]
		require.Zero(t, st.running, "read-ahead goroutines after Close")
		require.Empty(t, st.chunks, "read-ahead chunks held after Close")
	}
}

// TestTruncateFrontLetsGoOfReadAhead: a TruncateFront past every record a
// stream holds lets go of its chunks (they can never be read again).
func TestTruncateFrontLetsGoOfReadAhead(t *testing.T) {
	l, _ := seqLogCache(t, 40, 64, 1<<10, 64<<10)
	defer l.Close()
	for i := range uint64(200) {
		_, err := l.Read(i, nil)
		require.NoError(t, err)
	}
	l.ra.wg.Wait()
	require.NoError(t, l.Roll())
	require.NoError(t, l.TruncateFront(l.EndOffset()))
	l.ra.mu.Lock()
	defer l.ra.mu.Unlock()
	for i := range l.ra.streams {
		require.Zero(t, len(l.ra.streams[i].chunks), "chunks of truncated records held by stream %d", i)
	}
}
