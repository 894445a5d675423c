package engine

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// TestFreshMemoryIsBounded: whatever the size of the records appended
// (down to empty ones, one per batch), the fresh appends hold no more
// memory than their bound: the cache's slabs stay within the budget, the
// free blocks it keeps and the fresh bound.
func TestFreshMemoryIsBounded(t *testing.T) {
	for _, size := range []int{0, 1, 60, 100, 508, 509, 1000, 4096} {
		t.Run(fmt.Sprintf("size=%d", size), func(t *testing.T) {
			o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
			o.CacheBytes = 256 << 10
			o.SyncMode = SyncNever
			l, err := Open("sim", o)
			require.NoError(t, err)
			defer l.Close()
			bound := int64(l.fresh.maxBytes)
			rec := make([]byte, size)
			n := 2 * int(bound) / (size + 4)
			for range n {
				_, err := l.Append(rec)
				require.NoError(t, err)
			}
			st := l.cache.Stats()
			t.Logf("%d appends of %d bytes: mapped %d KiB, fresh bound %d KiB, budget %d KiB, pooled %d KiB",
				n, size, st.Mapped>>10, bound>>10, st.MaxBytes>>10, st.MaxPooled>>10)
			const slack = 128 << 10 // a partly used slab per class
			assert.LessOrEqual(t, st.Mapped, st.MaxBytes+st.MaxPooled+bound+slack)
		})
	}
}

