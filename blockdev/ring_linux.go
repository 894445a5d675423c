//go:build linux

package blockdev

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Concurrent direct reads go through an io_uring instance.
//
// A goroutine in pread(2) keeps its P (the scheduler's right to run Go
// code) until the runtime's monitor takes it back, tens of microseconds
// later or, when the monitor sleeps, milliseconds later. A direct read of
// a few KiB takes 30 to 300 µs on the device, so on a machine with few
// cores sixteen readers in pread hold every P most of the time: readers
// whose reads completed wait to be scheduled, few reads are in flight at
// once, and the slowest reads come in bursts of tens of milliseconds
// (measured on 2 cores: 16 readers did 1.5× the reads of one, with a p99
// of 22 ms, and 2.7× with GOMAXPROCS=16).
//
// Through the ring a reader queues its read, submits it (a system call
// that returns at once) and parks on a channel, which gives its P back;
// a completion is counted on an eventfd that the network poller watches,
// so waiting for completions blocks no thread. A read with no other
// direct read in flight keeps using pread: for it the ring only adds the
// hop through the poller.
//
// Only IORING_OP_READ (Linux 5.6) and the single mapping of both rings
// (IORING_FEAT_SINGLE_MMAP, 5.4) are used; the structures' layout is the
// kernel's stable ABI. Where the ring cannot be set up (an older kernel,
// a sandbox that forbids io_uring_setup) or SEGSTORE_IO_URING=off is in
// the environment, every read uses pread.

// readDirect reads len(p) bytes at off from f, opened with O_DIRECT, as
// f.ReadAt does.
func readDirect(f *os.File, p []byte, off int64) (int, error) {
	defer directInFlight.Add(-1)
	if directInFlight.Add(1) == 1 || len(p) == 0 {
		preadReads.Add(1)
		return f.ReadAt(p, off)
	}
	r := processRing()
	if r == nil {
		preadReads.Add(1)
		return f.ReadAt(p, off)
	}
	return r.readAt(f, p, off)
}

var (
	directInFlight atomic.Int32 // direct reads in progress in the process
	ringReads      atomic.Uint64
	preadReads     atomic.Uint64
)

// ReadPaths returns the process's counts of direct reads so far.
func ReadPaths() ReadPathStats {
	s := ReadPathStats{Ring: ringReads.Load(), Pread: preadReads.Load()}
	if ringSetUp.Load() {
		if ringErr != nil {
			s.RingOff = ringErr.Error()
		} else if r := theRing; r != nil {
			r.mu.Lock()
			if r.down != nil {
				s.RingOff = r.down.Error()
			}
			r.mu.Unlock()
		}
	}
	return s
}

var (
	ringOnce  sync.Once
	ringSetUp atomic.Bool // ringOnce has run: theRing and ringErr are set
	theRing   *ring
	ringErr   error
)

// processRing returns the process's ring, set up at the first call, or
// nil where there is none.
func processRing() *ring {
	ringOnce.Do(func() {
		if v := os.Getenv("SEGSTORE_IO_URING"); v == "off" || v == "0" {
			ringErr = errors.New("io_uring turned off by SEGSTORE_IO_URING=" + v)
		} else {
			theRing, ringErr = newRing(ringEntries)
		}
		ringSetUp.Store(true)
	})
	return theRing
}

// ring is one io_uring instance shared by every direct file.
type ring struct {
	fd      int
	sqMem   []byte // the submission and completion rings, one mapping
	sqeMem  []byte // the submission entries
	sqHead  *uint32
	sqTail  *uint32
	sqMask  uint32
	sqArray []uint32
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    []byte
	event   *os.File // eventfd: the kernel adds one per completion

	// slots are the free entries. A read takes one for as long as it is
	// in flight (none free: it uses pread), so no more reads are in
	// flight than the completion ring holds.
	slots chan uint64
	done  []chan int32 // per slot: the result of its read
	// bufs holds, per slot, the buffer the kernel is reading into; only
	// the reader holding the slot touches it. Storing the buffer here
	// makes it escape, so a caller's array is never on a goroutine
	// stack: a parked reader's stack can be shrunk (copied elsewhere)
	// while the kernel still holds the old address. Heap objects do not
	// move, and this reference keeps the buffer alive until completion.
	bufs [][]byte

	// enter submits n entries; a variable so that tests can make it fail.
	enter func(fd, n int) (int, error)
	// stopped ends reap (only tests stop a ring); reaped is closed then.
	stopped atomic.Bool
	reaped  chan struct{}

	mu sync.Mutex
	// Guarded by mu: one read's entry is queued and submitted at a time,
	// so the queue holds at most that one unsubmitted entry.
	sqLocal uint32 // the next submission tail
	down    error  // a submission failed: no more are made
}

const (
	ringEntries = 64

	// maxRingRead caps one entry's read: the entry's length field has
	// 32 bits, so a longer buffer would be read modulo 4 GiB (0 bytes, a
	// false end of file, for a buffer of exactly 4 GiB). It is a multiple
	// of every direct-I/O alignment and below the kernel's own cap on one
	// read (2 GiB less a page), so readAt's loop reads the rest.
	maxRingRead = 1 << 30

	opRead          = 22         // IORING_OP_READ
	registerEventfd = 4          // IORING_REGISTER_EVENTFD
	featSingleMmap  = 1          // IORING_FEAT_SINGLE_MMAP
	offSQEs         = 0x10000000 // IORING_OFF_SQES
	sqeSize         = 64         // struct io_uring_sqe
	cqeSize         = 16         // struct io_uring_cqe
)

// ringParams is struct io_uring_params.
type ringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFd uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		userAddr                                                        uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		userAddr                                                        uint64
	}
}

// newRing sets up a ring of the given entries, or says why this kernel
// (or its sandbox) gives none.
func newRing(entries int) (r *ring, err error) {
	var p ringParams
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("io_uring_setup: %w", errno)
	}
	r = &ring{fd: int(fd), enter: enter, reaped: make(chan struct{})}
	defer func() {
		if err != nil {
			r.close()
			r = nil
		}
	}()
	if p.features&featSingleMmap == 0 {
		return nil, errors.New("io_uring: the kernel maps its rings separately (older than Linux 5.4)")
	}
	size := max(p.sqOff.array+p.sqEntries*4, p.cqOff.cqes+p.cqEntries*cqeSize)
	if r.sqMem, err = unix.Mmap(r.fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("io_uring: map the rings: %w", err)
	}
	if r.sqeMem, err = unix.Mmap(r.fd, offSQEs, int(p.sqEntries)*sqeSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE); err != nil {
		return nil, fmt.Errorf("io_uring: map the submission entries: %w", err)
	}
	u32 := func(off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&r.sqMem[off])) }
	r.sqHead, r.sqTail, r.sqMask = u32(p.sqOff.head), u32(p.sqOff.tail), *u32(p.sqOff.ringMask)
	r.sqArray = unsafe.Slice(u32(p.sqOff.array), p.sqEntries)
	r.cqHead, r.cqTail, r.cqMask = u32(p.cqOff.head), u32(p.cqOff.tail), *u32(p.cqOff.ringMask)
	r.cqes = r.sqMem[p.cqOff.cqes : p.cqOff.cqes+p.cqEntries*cqeSize]
	r.sqLocal = atomic.LoadUint32(r.sqTail)

	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("io_uring: eventfd: %w", err)
	}
	r.event = os.NewFile(uintptr(efd), "io_uring completions") // non-blocking: the poller waits on it
	e32 := int32(efd)
	if _, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), registerEventfd, uintptr(unsafe.Pointer(&e32)), 1, 0, 0); errno != 0 {
		return nil, fmt.Errorf("io_uring: register the eventfd: %w", errno)
	}
	n := int(min(p.sqEntries, p.cqEntries))
	r.slots = make(chan uint64, n)
	r.done = make([]chan int32, n)
	r.bufs = make([][]byte, n)
	for i := range n {
		r.done[i] = make(chan int32, 1)
		r.slots <- uint64(i)
	}
	go r.reap()
	return r, nil
}

// close releases a ring that was not started (newRing's failure path).
func (r *ring) close() {
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
	}
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
	}
	if r.event != nil {
		r.event.Close()
	}
	unix.Close(r.fd)
}

// enter is io_uring_enter(2) submitting n entries without waiting.
func enter(fd, n int) (int, error) {
	done, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(fd), uintptr(n), 0, 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(done), nil
}

// readAt is f.ReadAt through the ring: it reads until p is full, the end
// of the file or an error, and falls back to pread for what it could not
// read through the ring (no free entry, or the ring is down).
func (r *ring) readAt(f *os.File, p []byte, off int64) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, &os.PathError{Op: "read", Path: f.Name(), Err: err}
	}
	var n int
	var readErr error
	ringUsed := true
	// Control holds the descriptor open while the kernel reads through it.
	ctlErr := rc.Control(func(fd uintptr) {
		for n < len(p) {
			m, errno, ok := r.read(int(fd), p[n:], off+int64(n))
			switch {
			case !ok:
				ringUsed = false
				return
			case errno == unix.ECANCELED || errno == unix.EINTR:
				// The kernel cancels the requests a thread submitted when
				// the thread exits (a goroutine that ends locked to its
				// thread ends the thread, and this read's submitter may
				// be any thread), and a worker it interrupts reports
				// EINTR. Neither is the read's answer: issue it again,
				// from this thread, as os.File.ReadAt retries EINTR.
				continue
			case errno != 0:
				readErr = &os.PathError{Op: "read", Path: f.Name(), Err: errno}
				return
			case m == 0:
				readErr = io.EOF
				return
			}
			n += m
		}
	})
	if ctlErr != nil {
		// The only failure of Control is a closed (or closing) file.
		return 0, &os.PathError{Op: "read", Path: f.Name(), Err: os.ErrClosed}
	}
	if !ringUsed {
		preadReads.Add(1)
		m, err := f.ReadAt(p[n:], off+int64(n))
		return n + m, err
	}
	return n, readErr
}

// read issues one read of b at off on fd and waits for it: the bytes
// read, or the kernel's error. ok is false if the read was not issued
// (every entry is in flight, or the ring is down): b was not touched.
// At most maxRingRead bytes are read.
func (r *ring) read(fd int, b []byte, off int64) (n int, errno unix.Errno, ok bool) {
	b = b[:min(len(b), maxRingRead)]
	var slot uint64
	select {
	case slot = <-r.slots:
	default:
		return 0, 0, false
	}
	r.bufs[slot] = b
	r.mu.Lock()
	if r.down != nil {
		r.mu.Unlock()
		r.bufs[slot] = nil
		r.slots <- slot
		return 0, 0, false
	}
	i := r.sqLocal & r.sqMask
	sqe := r.sqeMem[int(i)*sqeSize : int(i+1)*sqeSize]
	clear(sqe)
	sqe[0] = opRead
	*(*int32)(unsafe.Pointer(&sqe[4])) = int32(fd)
	*(*uint64)(unsafe.Pointer(&sqe[8])) = uint64(off)
	*(*uint64)(unsafe.Pointer(&sqe[16])) = uint64(uintptr(unsafe.Pointer(&b[0])))
	*(*uint32)(unsafe.Pointer(&sqe[24])) = uint32(len(b))
	*(*uint64)(unsafe.Pointer(&sqe[32])) = slot
	r.sqArray[i] = i
	r.sqLocal++
	atomic.StoreUint32(r.sqTail, r.sqLocal)
	err := r.submitLocked()
	if err != nil && atomic.LoadUint32(r.sqHead) != r.sqLocal {
		// The kernel did not take the entry, and with the ring down no
		// later submission takes it (nothing else consumes the queue):
		// b is the caller's again.
		r.down = err
		r.mu.Unlock()
		r.bufs[slot] = nil
		r.slots <- slot
		return 0, 0, false
	}
	if err != nil {
		r.down = err // taken despite the error: its completion comes
	}
	r.mu.Unlock()
	res := <-r.done[slot]
	runtime.KeepAlive(b) // the kernel wrote to b until the completion
	r.bufs[slot] = nil
	r.slots <- slot
	ringReads.Add(1)
	if res < 0 {
		return 0, unix.Errno(-res), true
	}
	return int(res), 0, true
}

// submitLocked submits the one queued entry. The caller holds r.mu.
func (r *ring) submitLocked() error {
	for tries := 0; ; tries++ {
		n, err := r.enter(r.fd, 1)
		switch {
		case err == nil && n == 1:
			return nil
		case err == unix.EINTR:
		case (err == unix.EAGAIN || err == unix.EBUSY) && tries < 100:
			runtime.Gosched() // the kernel is short of request memory, or completions are backed up
		case err == nil:
			return fmt.Errorf("io_uring_enter submitted %d of 1 read", n)
		default:
			return fmt.Errorf("io_uring_enter: %w", err)
		}
	}
}

// reap hands each completion to its reader. It runs for the life of the
// process, woken by the eventfd through the network poller.
func (r *ring) reap() {
	defer close(r.reaped)
	var buf [8]byte
	for {
		if _, err := r.event.Read(buf[:]); err != nil {
			if r.stopped.Load() {
				return
			}
			// The eventfd is closed only when a test stops the ring; if
			// it failed otherwise, polling keeps reads completing.
			time.Sleep(time.Millisecond)
		}
		head := atomic.LoadUint32(r.cqHead)
		for tail := atomic.LoadUint32(r.cqTail); head != tail; head++ {
			cqe := r.cqes[int(head&r.cqMask)*cqeSize:]
			slot := *(*uint64)(unsafe.Pointer(&cqe[0]))
			res := *(*int32)(unsafe.Pointer(&cqe[8]))
			r.done[slot] <- res
		}
		atomic.StoreUint32(r.cqHead, head)
	}
}
