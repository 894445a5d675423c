package engine

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
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

// TestReadRacingCloseKeepsNoBlock: a Read that passed its closed check
// before Close and notes its read after Close (it holds its segment, so
// it goes on) leaves no block held by the log's read-ahead: once the
// shared cache is closed too, every slab is unmapped. Swept over what the
// read-ahead held when Close came: a read to follow (the racing read
// starts a run), a run (it continues one), a run read ahead.
func TestReadRacingCloseKeepsNoBlock(t *testing.T) {
	for _, before := range []uint64{1, 2, 8} {
		t.Run(fmt.Sprintf("reads=%d", before), func(t *testing.T) {
			c, err := cache.New(1 << 20)
			require.NoError(t, err)
			defer c.Close()
			o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
			o.Cache = c
			l, err := Open("sim", o)
			require.NoError(t, err)
			appendN(t, l, 200)
			require.NoError(t, l.Close())
			l, err = Open("sim", o) // nothing in the fresh appends
			require.NoError(t, err)
			for off := range before {
				_, err := l.Read(off, nil)
				require.NoError(t, err)
			}
			l.ra.wg.Wait()
			// The racing Read, up to its noteRead: its segment held, its
			// chunk in hand.
			off := before
			s, err := l.segmentFor(off)
			require.NoError(t, err)
			start, end, complete, err := l.lookup(s, off, s.vis())
			require.NoError(t, err)
			v, err := l.chunkBytes(s, start, end, complete, off)
			require.NoError(t, err)
			require.NoError(t, l.Close())
			ch := chunk(v.Bytes())
			l.noteRead(off, raChunk{ns: s.ns, first: start.off, next: start.off + uint64(ch.count()), pos: start.pos, end: start.pos + ch.span(), left: ch.left(), v: v})
			v.Release()
			s.done()
			c.Close()
			st := c.Stats()
			assert.Zero(t, st.Mapped, "blocks still held after the log and its cache closed: %+v", st)
		})
	}
}
