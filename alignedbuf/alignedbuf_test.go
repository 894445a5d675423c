package alignedbuf

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestAllocAlignedAndFullCapacity(t *testing.T) {
	for _, align := range []int{1, 512, 4096, 65536} {
		for _, n := range []int{1, 511, 512, 4097, 1 << 20} {
			b, err := Alloc(n, align)
			require.NoError(t, err)
			assert.Len(t, b, n)
			assert.Equal(t, n, cap(b), "cap must equal len so append reallocates instead of misaligning")
			assert.True(t, IsSliceAligned(b, align), "align=%d n=%d addr=%#x", align, n, Addr(b))
			assert.Equal(t, make([]byte, n), b, "fresh allocation must be zeroed")
		}
	}
}

func TestAllocRejectsBadInput(t *testing.T) {
	for _, align := range []int{0, -4096, 3, 1000} {
		_, err := Alloc(16, align)
		assert.ErrorIs(t, err, ErrBadAlignment, "align=%d", align)
	}
	_, err := Alloc(-1, 512)
	assert.Error(t, err)
	b, err := Alloc(0, 512)
	require.NoError(t, err)
	assert.Empty(t, b)
}

func TestAlignArithmetic(t *testing.T) {
	tests := []struct {
		n, align, up, down int64
		aligned            bool
	}{
		{0, 512, 0, 0, true},
		{1, 512, 512, 0, false},
		{511, 512, 512, 0, false},
		{512, 512, 512, 512, true},
		{513, 4096, 4096, 0, false},
		{8191, 4096, 8192, 4096, false},
		{1 << 40, 4096, 1 << 40, 1 << 40, true},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.up, AlignUp(tc.n, tc.align), "AlignUp(%d,%d)", tc.n, tc.align)
		assert.Equal(t, tc.down, AlignDown(tc.n, tc.align), "AlignDown(%d,%d)", tc.n, tc.align)
		assert.Equal(t, tc.aligned, IsAligned(tc.n, tc.align), "IsAligned(%d,%d)", tc.n, tc.align)
	}
	assert.True(t, IsPowerOfTwo(1))
	assert.True(t, IsPowerOfTwo(4096))
	assert.False(t, IsPowerOfTwo(0))
	assert.False(t, IsPowerOfTwo(4095))
}

func TestPool(t *testing.T) {
	p, err := NewPool(8192, 4096)
	require.NoError(t, err)
	for i := 0; i < 10; i++ {
		b := p.Get()
		require.Len(t, b, 8192)
		require.Equal(t, 8192, cap(b))
		require.True(t, IsSliceAligned(b, 4096))
		p.Put(b)
	}
	// Foreign blocks are refused: the next Get still returns a proper block.
	p.Put(make([]byte, 8192)[1:])
	p.Put(make([]byte, 100))
	b := p.Get()
	assert.True(t, IsSliceAligned(b, 4096))
	assert.Len(t, b, 8192)

	_, err = NewPool(0, 4096)
	assert.Error(t, err)
	_, err = NewPool(4096, 3)
	assert.ErrorIs(t, err, ErrBadAlignment)
}
