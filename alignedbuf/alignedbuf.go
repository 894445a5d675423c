// Package alignedbuf allocates byte slices whose start address is aligned, as
// O_DIRECT I/O requires, and offers the arithmetic that goes with them.
//
// Every slice returned here has capacity equal to its length (b[:n:n]): an
// append on it must reallocate, and a reallocated slice is not aligned, so a
// full capacity would silently lose the alignment the caller asked for.
//
// Alignments are always given by the caller (they come from the device, see
// package blockdev); nothing here assumes 4096.
package alignedbuf

import (
	"errors"
	"fmt"
	"math/bits"
	"sync"
	"unsafe"
)

// ErrBadAlignment is returned for an alignment that is not a power of two
// greater than zero.
var ErrBadAlignment = errors.New("alignedbuf: alignment must be a power of two > 0")

// Alloc returns a zeroed slice of n bytes whose first byte sits at an address
// that is a multiple of align. The slice has len == cap == n.
func Alloc(n, align int) ([]byte, error) {
	if !IsPowerOfTwo(align) {
		return nil, fmt.Errorf("%w: got %d", ErrBadAlignment, align)
	}
	if n < 0 {
		return nil, fmt.Errorf("alignedbuf: negative size %d", n)
	}
	if n == 0 {
		return []byte{}, nil
	}
	raw := make([]byte, n+align-1)
	off := int(AlignUp(int64(Addr(raw)), int64(align)) - int64(Addr(raw)))
	return raw[off : off+n : off+n], nil
}

// MustAlloc is Alloc for sizes and alignments the caller has already checked
// (for example a device's reported alignment); it panics on a programming
// error, never on a runtime condition.
func MustAlloc(n, align int) []byte {
	b, err := Alloc(n, align)
	if err != nil {
		panic(err)
	}
	return b
}

// Addr returns the address of b's first byte (0 for an empty slice).
func Addr(b []byte) uintptr {
	if cap(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}

// IsPowerOfTwo reports whether a is a power of two greater than zero.
func IsPowerOfTwo(a int) bool { return a > 0 && bits.OnesCount(uint(a)) == 1 }

// AlignUp rounds n up to a multiple of align (a power of two).
func AlignUp(n, align int64) int64 { return (n + align - 1) &^ (align - 1) }

// AlignDown rounds n down to a multiple of align (a power of two).
func AlignDown(n, align int64) int64 { return n &^ (align - 1) }

// IsAligned reports whether n is a multiple of align (a power of two).
func IsAligned(n, align int64) bool { return n&(align-1) == 0 }

// IsSliceAligned reports whether b starts at an address that is a multiple
// of align. An empty slice is aligned.
func IsSliceAligned(b []byte, align int) bool {
	return cap(b) == 0 || IsAligned(int64(Addr(b)), int64(align))
}

// Pool recycles aligned blocks of one size. It is safe for concurrent use.
// Blocks handed out may hold data from earlier use: callers that need zeros
// must clear them.
type Pool struct {
	size, align int
	p           sync.Pool
}

// NewPool returns a pool of blocks of size bytes aligned to align.
func NewPool(size, align int) (*Pool, error) {
	if !IsPowerOfTwo(align) {
		return nil, fmt.Errorf("%w: got %d", ErrBadAlignment, align)
	}
	if size <= 0 {
		return nil, fmt.Errorf("alignedbuf: pool block size must be > 0, got %d", size)
	}
	pl := &Pool{size: size, align: align}
	pl.p.New = func() any {
		b := MustAlloc(size, align)
		return &b
	}
	return pl, nil
}

// Size is the length of every block of the pool.
func (pl *Pool) Size() int { return pl.size }

// Get returns an aligned block of Size bytes.
func (pl *Pool) Get() []byte { return *(pl.p.Get().(*[]byte)) }

// Put returns a block obtained from Get. Blocks of another size or alignment
// are dropped rather than pooled, so a caller's mistake cannot poison the pool.
func (pl *Pool) Put(b []byte) {
	if len(b) != pl.size || cap(b) != pl.size || !IsSliceAligned(b, pl.align) {
		return
	}
	pl.p.Put(&b)
}
