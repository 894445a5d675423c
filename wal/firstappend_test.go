package wal

import (
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// The writer's two MaxWrite buffers are allocated at its first append;
// until then the current buffer holds only the file's partial last block.
// These tests attack that first append: every size around the device
// block and around the largest batch, on a new file, on a file resumed
// with a partial last block of several lengths and on one resumed after a
// writer that appended nothing, with concurrent first appenders and after
// a failed write. What a reopen recovers is compared byte for byte with
// what was appended.

const firstMaxWrite = 16 << 10 // four device blocks of 4 KiB: the smallest MaxWrite

// largestRecord is the largest record that fits a batch of its own.
func largestRecord(t *testing.T, blk int64) int {
	return largestRecordOf(t, blk, firstMaxWrite)
}

func largestRecordOf(t *testing.T, blk int64, maxWrite int) int {
	lo, hi := 0, maxWrite // BatchFits holds for lo, not for hi
	for hi-lo > 1 {
		if m := (lo + hi) / 2; BatchFits([][]byte{make([]byte, m)}, maxWrite, blk) {
			lo = m
		} else {
			hi = m
		}
	}
	require.Positive(t, lo)
	return lo
}

// firstSizes: 1 and a few small sizes, every 4th size within 96 bytes of
// one and of two device blocks, and every 4th size up to the largest.
func firstSizes(t *testing.T, blk int64, largest int) []int {
	sizes := []int{1, 7, 8, 9, 100}
	for _, at := range []int{int(blk), 2 * int(blk)} {
		for s := at - 96; s <= at+96; s += 4 {
			sizes = append(sizes, s)
		}
	}
	for s := largest - 96; s <= largest; s += 4 {
		sizes = append(sizes, s)
	}
	return append(sizes, largest-1, largest)
}

// appended records what a test appended, by offset.
type appended map[uint64][]byte

func (a appended) append(t *testing.T, w *Writer, sizes ...int) {
	t.Helper()
	next := w.NextOffset()
	recs := make([][]byte, len(sizes))
	for i, s := range sizes {
		recs[i] = testutil.Record(next+uint64(i), s)
	}
	first, err := w.Append(recs...)
	require.NoError(t, err)
	require.Equal(t, next, first)
	for i, r := range recs {
		a[first+uint64(i)] = r
	}
}

// check reopens dev and compares every record recovered with what was
// appended.
func (a appended) check(t *testing.T, dev blockdev.Device) {
	t.Helper()
	got, rec := readAll(t, dev)
	require.Nil(t, rec.Torn, "a clean close leaves no torn tail")
	require.Len(t, got, len(a))
	for off, want := range a {
		require.Equal(t, want, got[off], "record %d", off)
	}
}

func resume(t *testing.T, dev blockdev.Device) *Writer {
	t.Helper()
	rec, err := Recover(dev)
	require.NoError(t, err)
	w, err := Resume(dev, rec, Options{})
	require.NoError(t, err)
	return w
}

// TestFirstAppendSweep: for each size of a first append and each state of
// the file it continues, the first append, a second of the same size and
// a largest one (the flush that allocates the spare and carries the tail
// into it) come back byte for byte after a reopen, as does everything
// before them.
func TestFirstAppendSweep(t *testing.T) {
	for _, blk := range []int64{512, 4096, 8192} {
		t.Run(fmt.Sprintf("block %d", blk), func(t *testing.T) { firstAppendSweep(t, blk) })
	}
}

func firstAppendSweep(t *testing.T, blk int64) {
	maxWrite := int(max(4*blk, firstMaxWrite))
	largest := largestRecordOf(t, blk, maxWrite)
	prefixes := []struct {
		name  string
		sizes [][]int // batches appended (and the writer closed) before the one tested; nil: a new file
		empty int     // writers opened and closed with no append before the one tested
	}{
		{name: "new file"},
		{name: "new file, closed unused first", empty: 1},
		{name: "tail of 40 bytes", sizes: [][]int{{8}}},
		{name: "tail of a block less 8", sizes: [][]int{{int(blk) - 64 - FrameHeaderLen - RecordHeaderLen}}},
		{name: "tail after a block", sizes: [][]int{{int(blk)}, {300}}},
		{name: "tail after a largest batch, closed unused twice", sizes: [][]int{{largest}, {1000, 1000}}, empty: 2},
	}
	for _, p := range prefixes {
		t.Run(p.name, func(t *testing.T) {
			for _, size := range firstSizes(t, blk, largest) {
				dev := blockdev.NewSim(blockdev.SimOptions{Name: fmt.Sprint("size", size), Seed: uint64(size),
					Alignment: blockdev.Alignment{Memory: blockdev.SectorSize, Offset: blockdev.SectorSize, Block: int(blk)}})
				w, err := Create(dev, 0, Options{MaxWrite: maxWrite})
				require.NoError(t, err)
				want := appended{}
				for _, b := range p.sizes {
					want.append(t, w, b...)
					require.NoError(t, w.Close())
					w = resume(t, dev)
				}
				for range p.empty {
					require.NoError(t, w.Close())
					w = resume(t, dev)
				}
				if p.sizes != nil || p.empty > 0 {
					require.Less(t, len(w.cur.b), maxWrite, "size %d: a writer allocated its buffer before its first append", size)
				}
				// One past the largest batch is refused before anything is
				// reserved or allocated.
				_, err = w.Append(make([]byte, largest+1))
				require.ErrorIs(t, err, ErrBatchTooLarge)
				if p.sizes != nil || p.empty > 0 {
					require.Less(t, len(w.cur.b), maxWrite)
				}
				want.append(t, w, size)
				want.append(t, w, size)
				want.append(t, w, largest)
				want.append(t, w, 1)
				require.NoError(t, w.Close(), "size %d", size)
				want.check(t, dev)

				// And once more on the resumed file, whose tail the first
				// append carries.
				w = resume(t, dev)
				want.append(t, w, size)
				want.append(t, w, largest)
				require.NoError(t, w.Close(), "size %d", size)
				want.check(t, dev)
			}
		})
	}
}

// TestConcurrentFirstAppends: appenders that race for a resumed writer's
// first append (the one that allocates the buffers and carries the
// partial last block) all land, with the records before them intact.
func TestConcurrentFirstAppends(t *testing.T) {
	const blk = 4096
	largest := largestRecord(t, blk)
	for _, tc := range []struct {
		appenders int
		sizes     []int
	}{
		{2, []int{1}},
		{8, []int{100}},
		{8, []int{blk - 40, 1}},
		{16, []int{largest}},
		{16, []int{1, blk, largest, 2 * blk}},
	} {
		t.Run(fmt.Sprintf("%d appenders of %v", tc.appenders, tc.sizes), func(t *testing.T) {
			for try := range 20 {
				dev := newSim(uint64(try))
				w, err := Create(dev, 0, Options{MaxWrite: firstMaxWrite})
				require.NoError(t, err)
				want := appended{}
				want.append(t, w, 500, 77)
				require.NoError(t, w.Close())
				w = resume(t, dev)

				var mu sync.Mutex
				var wg sync.WaitGroup
				for a := range tc.appenders {
					wg.Add(1)
					go func() {
						defer wg.Done()
						size := tc.sizes[a%len(tc.sizes)]
						// The record's bytes name its appender and size: the
						// offset it gets is known only after.
						r := testutil.Record(uint64(1000+a), size)
						first, err := w.Append(r)
						if !assert.NoError(t, err) {
							return
						}
						mu.Lock()
						want[first] = r
						mu.Unlock()
					}()
				}
				wg.Wait()
				require.NoError(t, w.Close())
				want.check(t, dev)
			}
		})
	}
}

// TestFirstAppendAfterAFailedWrite: a resumed writer whose first write
// fails refuses every later append, Sync and Close with the failure
// (never panics on its missing spare buffer); the file still holds
// everything before, and a new writer on it appends again.
func TestFirstAppendAfterAFailedWrite(t *testing.T) {
	const blk = 4096
	largest := largestRecord(t, blk)
	for _, size := range []int{1, blk - 40, blk, largest} {
		for _, mode := range []SyncMode{SyncAlways, SyncNever} {
			t.Run(fmt.Sprintf("size %d mode %d", size, mode), func(t *testing.T) {
				dev := newSim(uint64(size))
				w, err := Create(dev, 0, Options{MaxWrite: firstMaxWrite})
				require.NoError(t, err)
				want := appended{}
				want.append(t, w, 300)
				require.NoError(t, w.Close())
				rec, err := Recover(dev)
				require.NoError(t, err)
				w, err = Resume(dev, rec, Options{SyncMode: mode})
				require.NoError(t, err)

				dev.FailNth(blockdev.OpWrite, dev.Calls(blockdev.OpWrite)+1)
				_, err = w.Append(testutil.Record(w.NextOffset(), size))
				if mode == SyncAlways {
					require.ErrorIs(t, err, ErrFailed)
				} else {
					require.NoError(t, err) // buffered: the failure comes with the flush
					require.ErrorIs(t, w.Sync(), ErrFailed)
				}
				for range 3 {
					_, err = w.Append(testutil.Record(w.NextOffset(), size))
					require.ErrorIs(t, err, ErrFailed)
				}
				require.ErrorIs(t, w.Sync(), ErrFailed)
				require.ErrorIs(t, w.Close(), ErrFailed)
				assert.Equal(t, 1, dev.Injected().WriteErrors)

				want.check(t, dev)
				w = resume(t, dev)
				want.append(t, w, size)
				want.append(t, w, largest)
				require.NoError(t, w.Close())
				want.check(t, dev)
			})
		}
	}
}

// TestCloseBeforeAnyAppend: a writer created or resumed and closed, or
// sealed, with no append allocates neither buffer, writes no frame and
// leaves a file that opens with what it held.
func TestCloseBeforeAnyAppend(t *testing.T) {
	dev := newSim(1)
	w, err := Create(dev, 0, Options{MaxWrite: firstMaxWrite})
	require.NoError(t, err)
	require.Less(t, len(w.cur.b), firstMaxWrite)
	require.Nil(t, w.spare.b)
	require.NoError(t, w.Close())
	want := appended{}
	want.check(t, dev)
	for range 3 {
		w = resume(t, dev)
		require.NoError(t, w.Sync())
		require.NoError(t, w.Close())
		require.Nil(t, w.spare.b)
		want.check(t, dev)
	}
	w = resume(t, dev)
	want.append(t, w, 10)
	require.NoError(t, w.Close())
	w = resume(t, dev)
	_, err = w.Seal([]byte("footer"))
	require.NoError(t, err)
	got, rec := readAll(t, dev)
	require.NotNil(t, rec)
	require.Equal(t, want[0], got[0])
}
