package blockdev

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/segstore/segstore/alignedbuf"
)

// ringFileSize is not a multiple of the block size, so that reads at the
// end come back short.
const ringFileSize = 1<<20 + 1536

// directFile writes ringFileSize random bytes to a file and opens it
// again with O_DIRECT, read-only. It returns the file and its bytes.
func directFile(t *testing.T) (*os.File, []byte) { return directFileOf(t, ringFileSize, 2) }

// directFileOf is directFile for size bytes drawn from seed.
func directFileOf(t *testing.T, size int, seed uint64) (*os.File, []byte) {
	t.Helper()
	want := make([]byte, size)
	rng := rand.New(rand.NewPCG(1, seed))
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	path := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(path, want, 0o644))
	f, err := openFile(path, os.O_RDONLY, 0, true)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f, want
}

// ringPipe is a blocking pipe: a ring read of its read end stays in
// flight until the test writes to the other.
func ringPipe(t *testing.T) (rf, wf *os.File) {
	t.Helper()
	var fds [2]int
	require.NoError(t, unix.Pipe2(fds[:], unix.O_CLOEXEC))
	rf, wf = os.NewFile(uintptr(fds[0]), "pipe read"), os.NewFile(uintptr(fds[1]), "pipe write")
	t.Cleanup(func() { rf.Close(); wf.Close() })
	return rf, wf
}

// waitParked returns once r has exactly one read submitted and not
// completed.
func waitParked(r *ring) {
	for {
		r.mu.Lock()
		submitted := len(r.slots) == cap(r.slots)-1 && atomic.LoadUint32(r.sqHead) == r.sqLocal && r.sqLocal != 0
		r.mu.Unlock()
		if submitted {
			return
		}
		runtime.Gosched()
	}
}

// testRing is a ring of its own for a test, or a skip saying why this
// machine has none.
func testRing(t *testing.T, entries int) *ring {
	t.Helper()
	r, err := newRing(entries)
	if err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	t.Cleanup(func() {
		require.Len(t, r.slots, cap(r.slots), "a read is still in flight")
		r.stopped.Store(true)
		r.event.Close()
		<-r.reaped
		r.close()
	})
	return r
}

func alignedBuf(n int) []byte { return alignedbuf.MustAlloc(n, 4096) }

func TestRingReadsWhatPreadReads(t *testing.T) {
	f, want := directFile(t)
	r := testRing(t, 8)
	end := int64(ringFileSize) / 4096 * 4096
	tests := []struct {
		name string
		off  int64
		n    int
	}{
		{"first block", 0, 4096},
		{"64 KiB inside", 4096 * 5, 64 << 10},
		{"1 MiB from the start", 0, 1 << 20},
		{"across the end: short", end - 4096, 4 * 4096},
		{"the last partial block", end, 4096},
		{"past the end", end + 4096, 4096},
		{"the whole file and more", 0, 2 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			viaRing, viaPread := alignedBuf(tt.n), alignedBuf(tt.n)
			n, err := r.readAt(f, viaRing, tt.off)
			pn, perr := f.ReadAt(viaPread, tt.off)
			require.Equal(t, pn, n, "bytes read")
			require.Equal(t, perr, err)
			if tt.off < int64(len(want)) {
				require.Equal(t, want[tt.off:tt.off+int64(n)], viaRing[:n])
			}
		})
	}
}

func TestRingReportsTheKernelsErrorAsPreadDoes(t *testing.T) {
	f, _ := directFile(t)
	r := testRing(t, 8)
	buf := alignedBuf(8192)[1 : 1+4096] // misaligned memory: O_DIRECT refuses it
	_, perr := f.ReadAt(buf, 0)
	require.ErrorIs(t, perr, unix.EINVAL)
	_, err := r.readAt(f, buf, 0)
	require.ErrorIs(t, err, unix.EINVAL)
	var pe *os.PathError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, f.Name(), pe.Path, "the error names the file")
}

// TestConcurrentDirectReadsGoThroughTheRing holds one read in flight for
// the whole test, so that every read the readers make has another beside
// it: each must go through the process's ring and return the file's
// bytes.
func TestConcurrentDirectReadsGoThroughTheRing(t *testing.T) {
	f, want := directFile(t)
	if processRing() == nil {
		t.Skipf("no io_uring here: %v", ringErr)
	}
	directInFlight.Add(1)
	defer directInFlight.Add(-1)
	before := ReadPaths()
	const readers, reads = 16, 50
	var wg sync.WaitGroup
	for g := range readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			buf := alignedBuf(8192)
			for range reads {
				off := rng.Int64N(ringFileSize/4096-2) * 4096
				n, err := readDirect(f, buf, off)
				if !assert.NoError(t, err) || !assert.Equal(t, len(buf), n) {
					return
				}
				assert.Equal(t, want[off:off+int64(n)], buf)
			}
		})
	}
	wg.Wait()
	after := ReadPaths()
	assert.Equal(t, before.Pread, after.Pread, "no read used pread")
	assert.GreaterOrEqual(t, after.Ring-before.Ring, uint64(readers*reads), "reads through the ring")
	assert.Empty(t, after.RingOff)
}

func TestALoneDirectReadUsesPread(t *testing.T) {
	f, want := directFile(t)
	before := ReadPaths()
	buf := alignedBuf(4096)
	n, err := readDirect(f, buf, 4096)
	require.NoError(t, err)
	require.Equal(t, want[4096:4096+n], buf)
	assert.Greater(t, ReadPaths().Pread, before.Pread)
}

// TestRingFallsBackToPread covers every way a read can fail to be
// issued through the ring: no free entry, a submission refused, and the
// ring down after one. Each read must still return the file's bytes.
func TestRingFallsBackToPread(t *testing.T) {
	f, want := directFile(t)
	refused := func(int, int) (int, error) { return 0, unix.ENOMEM }
	tests := []struct {
		name     string
		prepare  func(t *testing.T, r *ring)
		issued   bool // the first read went through the ring
		downLeft bool // the ring is down after it
	}{
		{"no free entry", func(t *testing.T, r *ring) {
			taken := make([]uint64, cap(r.slots))
			for i := range taken {
				taken[i] = <-r.slots
			}
			t.Cleanup(func() {
				for _, s := range taken {
					r.slots <- s
				}
			})
		}, false, false},
		{"submission refused", func(t *testing.T, r *ring) { r.enter = refused }, false, true},
		{"submission taken despite an error", func(t *testing.T, r *ring) {
			r.enter = func(fd, n int) (int, error) {
				if _, err := enter(fd, n); err != nil {
					return 0, err
				}
				return 0, unix.EIO // taken, and an error reported all the same
			}
		}, true, true},
		{"ring already down", func(t *testing.T, r *ring) { r.down = errors.New("down") }, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := testRing(t, 8)
			tt.prepare(t, r)
			buf := alignedBuf(8192)
			n, errno, ok := r.read(int(f.Fd()), buf, 8192)
			require.Equal(t, tt.issued, ok, "issued through the ring")
			if ok {
				require.Zero(t, errno)
				require.Equal(t, want[8192:8192+n], buf[:n])
			}
			r.mu.Lock()
			down := r.down
			r.mu.Unlock()
			assert.Equal(t, tt.downLeft, down != nil, "ring down: %v", down)

			clear(buf)
			n, err := r.readAt(f, buf, 8192)
			require.NoError(t, err)
			require.Equal(t, len(buf), n)
			require.Equal(t, want[8192:8192+n], buf)
		})
	}
}

func TestRingReadOfAClosedFile(t *testing.T) {
	f, _ := directFile(t)
	r := testRing(t, 8)
	require.NoError(t, f.Close())
	buf := alignedBuf(4096)
	_, perr := f.ReadAt(buf, 0)
	_, err := r.readAt(f, buf, 0)
	require.ErrorIs(t, perr, os.ErrClosed)
	require.ErrorIs(t, err, os.ErrClosed)
}

// TestRingReadsWhileTheFileCloses closes the file under readers of the
// ring: each read returns the file's bytes or os.ErrClosed, and none is
// left waiting.
func TestRingReadsWhileTheFileCloses(t *testing.T) {
	f, want := directFile(t)
	r := testRing(t, 8)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 4))
			buf := alignedBuf(4096)
			<-start
			for range 200 {
				off := rng.Int64N(ringFileSize/4096-1) * 4096
				n, err := r.readAt(f, buf, off)
				if err != nil {
					assert.ErrorIs(t, err, os.ErrClosed)
					return
				}
				assert.Equal(t, want[off:off+int64(n)], buf[:n])
			}
		})
	}
	close(start)
	require.NoError(t, f.Close())
	wg.Wait()
	assert.Len(t, r.slots, cap(r.slots), "every entry is free again")
}

// TestRingWithMoreReadersThanEntries makes more reads in flight
// than the ring has entries: the extra ones use pread, and every one
// returns the file's bytes.
func TestRingWithMoreReadersThanEntries(t *testing.T) {
	f, want := directFile(t)
	r := testRing(t, 2)
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 5))
			buf := alignedBuf(16384)
			for range 50 {
				off := rng.Int64N(ringFileSize/4096-4) * 4096
				n, err := r.readAt(f, buf, off)
				if !assert.NoError(t, err) {
					return
				}
				assert.Equal(t, want[off:off+int64(n)], buf[:n])
			}
		})
	}
	wg.Wait()
	assert.Len(t, r.slots, cap(r.slots), "every entry is free again")
}

// TestRingReadsOfFourGiBAndMore reads into buffers whose length does not
// fit the entry's 32-bit length field. The buffer is an anonymous
// mapping that is never touched beyond the file's bytes, so it costs
// address space only. Each read must return what pread returns: the
// whole file and io.EOF.
func TestRingReadsOfFourGiBAndMore(t *testing.T) {
	f, want := directFile(t)
	r := testRing(t, 8)
	tests := []struct {
		name string
		n    int
	}{
		{"4 GiB: the field would read 0", 4 << 30},
		{"4 GiB and a block: the field would read one block", 4<<30 + 4096},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf, err := unix.Mmap(-1, 0, tt.n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
			if err != nil {
				t.Skipf("no address space for the buffer: %v", err)
			}
			defer unix.Munmap(buf)
			pn, perr := f.ReadAt(buf, 0)
			require.Equal(t, len(want), pn, "pread")
			clear(buf[:pn])
			n, err := r.readAt(f, buf, 0)
			require.Equal(t, pn, n, "bytes read")
			require.Equal(t, perr, err)
			require.Equal(t, want, buf[:n])
		})
	}
}

// TestRingSweepAcrossFiles reads many direct files of different sizes
// at once, with every read made beside another one (so through the
// ring), at block offsets and lengths that fall inside, across and past
// each file's end, and checks each read's count, error and bytes
// against pread's.
func TestRingSweepAcrossFiles(t *testing.T) {
	if processRing() == nil {
		t.Skipf("no io_uring here: %v", ringErr)
	}
	sizes := []int{0, 512, 4096, 4096 + 512, 64<<10 + 1536, 1 << 20}
	type file struct {
		f    *os.File
		want []byte
	}
	files := make([]file, len(sizes))
	for i, size := range sizes {
		f, want := directFileOf(t, size, 9+uint64(i))
		files[i] = file{f, want}
	}
	directInFlight.Add(1)
	defer directInFlight.Add(-1)
	before := ReadPaths()
	var wg sync.WaitGroup
	for g := range 12 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 10))
			for range 300 {
				fl := files[rng.IntN(len(files))]
				blocks := int64(len(fl.want))/4096 + 2
				off := rng.Int64N(blocks) * 4096
				n := (1 + rng.IntN(40)) * 4096
				got, viaPread := alignedBuf(n), alignedBuf(n)
				m, err := readDirect(fl.f, got, off)
				pm, perr := fl.f.ReadAt(viaPread, off)
				if !assert.Equal(t, pm, m, "count at %d+%d of %d", off, n, len(fl.want)) || !assert.Equal(t, perr, err) {
					return
				}
				assert.Equal(t, viaPread[:pm], got[:m])
			}
		})
	}
	wg.Wait()
	after := ReadPaths()
	assert.GreaterOrEqual(t, after.Ring-before.Ring, uint64(12*300), "reads through the ring")
	assert.Empty(t, after.RingOff)
}
