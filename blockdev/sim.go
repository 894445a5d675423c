package blockdev

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Op names a kind of device operation, for fault injection.
type Op int

const (
	OpRead Op = iota
	OpWrite
	OpSync
	numOps
)

func (o Op) String() string {
	switch o {
	case OpRead:
		return "read"
	case OpWrite:
		return "write"
	case OpSync:
		return "sync"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// CrashMode says what a Sim keeps of the writes that were not synced.
type CrashMode int

const (
	// CrashDropUnsynced keeps only what the last successful Sync covered.
	CrashDropUnsynced CrashMode = iota
	// CrashTear keeps each unsynced sector independently with probability
	// 1/2, in any order: the worst a volatile write cache may do under the
	// sector-atomicity assumption. Size changes are kept or lost as a whole.
	CrashTear
	// CrashKeepAll keeps every completed write, as after a process kill
	// (the page cache survives).
	CrashKeepAll
)

// Injected counts the faults a Sim has injected.
type Injected struct {
	ReadErrors, WriteErrors, SyncErrors int
	BitFlips, Misdirected               int
	// TornSectors and DroppedWrites describe Crash: sectors of unsynced
	// writes lost by tearing, and unsynced writes lost whole.
	TornSectors, DroppedWrites int
	Crashes                    int
}

// SimOptions configure NewSim.
type SimOptions struct {
	// Name appears in errors as "sim:<Name>".
	Name string
	// Alignment enforced on ReadAt/WriteAt. Default mem=512 off=512 block=4096.
	Alignment Alignment
	// Seed makes tearing reproducible.
	Seed uint64
	// SyncLatency is how long each Sync takes, as a real fdatasync would
	// (other calls proceed meanwhile). Default 0.
	SyncLatency time.Duration
}

// Sim is an in-memory Device for tests that keeps synced and unsynced data
// apart and injects faults on request. It is safe for concurrent use.
type Sim struct {
	mu      sync.Mutex
	name    atomic.Pointer[string] // "sim:" and the file's name; a SimDir rename changes it
	align   Alignment
	latency time.Duration
	rng     *rand.Rand
	data    []byte     // what reads see now
	durable []byte     // what survives a crash
	pending []simWrite // changes since the last successful Sync, in order
	crashed bool
	closed  bool
	changes *simChanges // the directory's change counter, nil outside a SimDir
	mapped  []byte      // the memory every SharedMapping of the file shares (SimDir.MapShared)
	mapOnly bool        // created by SimDir.MapShared, not as a device

	ops       [numOps]int // completed calls per Op
	failAt    [numOps]map[int]bool
	misdirect map[int]int64 // write number -> displacement
	injected  Injected
}

type simWrite struct {
	off    int64
	data   []byte // nil for a size change
	resize int64
}

var _ Device = (*Sim)(nil)

// NewSim returns an empty simulated device.
func NewSim(opts SimOptions) *Sim {
	a := opts.Alignment
	if a == (Alignment{}) {
		a = Alignment{Memory: SectorSize, Offset: SectorSize, Block: 4096}
	}
	a.Source = "sim"
	if !a.valid() {
		panic(fmt.Sprintf("blockdev: NewSim: invalid alignment %v", a))
	}
	name := opts.Name
	if name == "" {
		name = "dev"
	}
	s := &Sim{align: a, latency: opts.SyncLatency, rng: rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x9e3779b97f4a7c15))}
	s.setName(name)
	return s
}

// setName names the device "sim:"+name from now on (errors and Name).
func (s *Sim) setName(name string) {
	n := "sim:" + name
	s.name.Store(&n)
}

func (s *Sim) label() string { return *s.name.Load() }

// NewSimFrom returns a simulated device whose synced content is image (which
// it copies), with the alignment and seed of opts.
func NewSimFrom(image []byte, opts SimOptions) *Sim {
	s := NewSim(opts)
	s.data = append([]byte(nil), image...)
	s.durable = append([]byte(nil), image...)
	return s
}

// FailNth makes the nth (1-based, counted over the device's life) call of op
// fail with an injected EIO. A failed write writes nothing; a failed sync
// makes nothing durable.
func (s *Sim) FailNth(op Op, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failAt[op] == nil {
		s.failAt[op] = map[int]bool{}
	}
	s.failAt[op][n] = true
}

// Calls returns how many calls of op the device has seen.
func (s *Sim) Calls(op Op) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ops[op]
}

// MisdirectNth makes the nth write land delta bytes away from where it was
// aimed (delta a multiple of the offset alignment), as a misdirected write
// does. The intended location keeps its old content.
func (s *Sim) MisdirectNth(n int, delta int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.misdirect == nil {
		s.misdirect = map[int]int64{}
	}
	s.misdirect[n] = delta
}

// FlipBit flips one bit of both the current and the durable content, as
// media corruption does.
func (s *Sim) FlipBit(off int64, bit uint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, b := range [][]byte{s.data, s.durable} {
		if off < int64(len(b)) {
			b[off] ^= 1 << (bit % 8)
		}
	}
	s.injected.BitFlips++
}

// Injected returns the counts of injected faults so far.
func (s *Sim) Injected() Injected {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.injected
}

// Bytes returns a copy of what reads see now.
func (s *Sim) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]byte(nil), s.data...)
}

// Crash simulates a power loss: the returned image is the durable content
// plus whatever of the unsynced changes mode keeps. Every later operation on
// s fails with ErrCrashed. Reopen the image with NewSimFrom.
func (s *Sim) Crash(mode CrashMode) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.crashed = true
	s.injected.Crashes++
	img := append([]byte(nil), s.durable...)
	sector := int64(max(SectorSize, s.align.Offset))
	for _, w := range s.pending {
		switch {
		case mode == CrashKeepAll:
			img = applyWrite(img, w, sector, nil)
		case mode == CrashDropUnsynced:
			s.injected.DroppedWrites++
		case w.data == nil: // size change: all or nothing
			if s.rng.IntN(2) == 0 {
				img = applyWrite(img, w, sector, nil)
			} else {
				s.injected.DroppedWrites++
			}
		default:
			img = applyWrite(img, w, sector, func() bool {
				keep := s.rng.IntN(2) == 0
				if !keep {
					s.injected.TornSectors++
				}
				return keep
			})
		}
	}
	s.pending = nil
	return img
}

// applyWrite applies w to img. keep, if not nil, is asked per sector of a
// data write whether that sector persists; the image still grows to cover
// the write (the size is metadata that reached the journal; torn sectors
// read as what was there, zeros past the old end).
func applyWrite(img []byte, w simWrite, sector int64, keep func() bool) []byte {
	if w.data == nil {
		if w.resize <= int64(len(img)) {
			return img[:w.resize]
		}
		return append(img, make([]byte, w.resize-int64(len(img)))...)
	}
	end := w.off + int64(len(w.data))
	if end > int64(len(img)) {
		img = append(img, make([]byte, end-int64(len(img)))...)
	}
	if keep == nil {
		copy(img[w.off:], w.data)
		return img
	}
	for i := int64(0); i < int64(len(w.data)); i += sector {
		j := min(i+sector, int64(len(w.data)))
		if keep() {
			copy(img[w.off+i:w.off+j], w.data[i:j])
		}
	}
	return img
}

// enter checks the device state and counts the call; it returns the
// injected error for this call, if any. s.mu must be held.
func (s *Sim) enterLocked(op Op) (n int, err error) {
	if s.crashed {
		return 0, fmt.Errorf("blockdev: %s %s: %w", op, s.label(), ErrCrashed)
	}
	if s.closed {
		return 0, fmt.Errorf("blockdev: %s %s: %w", op, s.label(), os.ErrClosed)
	}
	if op != OpRead && s.changes != nil {
		if err := s.changes.enter(op.String(), s.label()); err != nil {
			return 0, err
		}
	}
	s.ops[op]++
	n = s.ops[op]
	if s.failAt[op][n] {
		switch op {
		case OpRead:
			s.injected.ReadErrors++
		case OpWrite:
			s.injected.WriteErrors++
		case OpSync:
			s.injected.SyncErrors++
		}
		return n, fmt.Errorf("blockdev: %s %s (call #%d): %w: %w", op, s.label(), n, ErrInjected, syscall.EIO)
	}
	return n, nil
}

func (s *Sim) ReadAt(p []byte, off int64) (int, error) {
	if err := checkAligned("read", s.label(), s.align, p, off); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.readAtLocked(p, off)
}

// readAtLocked is ReadAt without the alignment check. s.mu must be held.
func (s *Sim) readAtLocked(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blockdev: read %s: negative offset %d", s.label(), off)
	}
	if _, err := s.enterLocked(OpRead); err != nil {
		return 0, err
	}
	if off >= int64(len(s.data)) {
		return 0, io.EOF
	}
	n := copy(p, s.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *Sim) WriteAt(p []byte, off int64) (int, error) {
	if err := checkAligned("write", s.label(), s.align, p, off); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeAtLocked(p, off)
}

// writeAtLocked is WriteAt without the alignment check. s.mu must be held.
func (s *Sim) writeAtLocked(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("blockdev: write %s: negative offset %d", s.label(), off)
	}
	n, err := s.enterLocked(OpWrite)
	if err != nil {
		return 0, err
	}
	if delta, ok := s.misdirect[n]; ok {
		off += delta
		s.injected.Misdirected++
	}
	w := simWrite{off: off, data: append([]byte(nil), p...)}
	s.data = applyWrite(s.data, w, 0, nil)
	s.pending = append(s.pending, w)
	return len(p), nil
}

func (s *Sim) Sync() error {
	if s.latency > 0 {
		time.Sleep(s.latency)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.enterLocked(OpSync); err != nil {
		return err
	}
	for _, w := range s.pending {
		s.durable = applyWrite(s.durable, w, 0, nil)
	}
	s.pending = nil
	return nil
}

func (s *Sim) resize(op string, size int64, grow bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.crashed {
		return fmt.Errorf("blockdev: %s %s: %w", op, s.label(), ErrCrashed)
	}
	if s.closed {
		return fmt.Errorf("blockdev: %s %s: %w", op, s.label(), os.ErrClosed)
	}
	if size < 0 {
		return fmt.Errorf("blockdev: %s %s: negative size %d", op, s.label(), size)
	}
	if grow && size <= int64(len(s.data)) {
		return nil
	}
	if s.changes != nil {
		if err := s.changes.enter(op, s.label()); err != nil {
			return err
		}
	}
	w := simWrite{resize: size}
	s.data = applyWrite(s.data, w, 0, nil)
	s.pending = append(s.pending, w)
	return nil
}

func (s *Sim) Allocate(off, n int64) error { return s.resize("allocate", off+n, true) }
func (s *Sim) Truncate(size int64) error   { return s.resize("truncate", size, false) }

func (s *Sim) Size() (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.crashed {
		return 0, fmt.Errorf("blockdev: size %s: %w", s.label(), ErrCrashed)
	}
	return int64(len(s.data)), nil
}

func (s *Sim) Alignment() Alignment { return s.align }
func (s *Sim) Direct() bool         { return true }
func (s *Sim) Name() string         { return s.label() }
func (s *Sim) File() *os.File       { return nil }

func (s *Sim) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("blockdev: close %s: %w", s.label(), os.ErrClosed)
	}
	s.closed = true
	return nil
}
