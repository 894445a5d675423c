package engine

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// TestLargerMaxWriteAfterReopenTakesBatchesWithinIt sweeps a log reopened
// with a larger MaxWrite than its active segment was created with (the
// segment's header keeps the old one), with that segment empty or holding
// records, and batches that fit the old limit, only the new one, or
// neither: a batch within the log's MaxWrite is appended (into a new
// segment when the active one cannot take it), one beyond it is refused
// with ErrBatchTooLarge and changes nothing, and every acknowledged
// record is read back, also after another reopen.
func TestLargerMaxWriteAfterReopenTakesBatchesWithinIt(t *testing.T) {
	const newMax = 64 << 10
	for _, oldMax := range []int{16 << 10, 32 << 10} {
		for _, empty := range []bool{false, true} {
			for _, size := range []int{oldMax / 2, oldMax + 1, newMax - 8<<10, newMax + 1} {
				t.Run(fmt.Sprintf("old=%d/empty=%v/batch=%d", oldMax, empty, size), func(t *testing.T) {
					d := blockdev.NewSimDir(blockdev.SimOptions{})
					o := testOptions(d) // SegmentSize 128 KiB
					o.MaxWrite, o.IndexInterval = oldMax, 0
					l, err := Open("sim", o)
					require.NoError(t, err)
					_, err = l.Append([]byte("small"))
					require.NoError(t, err)
					if empty {
						require.NoError(t, l.Roll())
					}
					require.NoError(t, l.Close())

					o.MaxWrite = newMax
					l, err = Open("sim", o)
					require.NoError(t, err)
					defer func() { l.Close() }()
					want := [][]byte{[]byte("small")}
					fits := wal.BatchFits([][]byte{make([]byte, size)}, newMax, 512)
					for i := range 5 {
						rec := bytes.Repeat([]byte{byte(i + 1)}, size)
						segs := len(l.Segments())
						off, err := l.Append(rec)
						if !fits {
							require.ErrorIs(t, err, wal.ErrBatchTooLarge, "a batch beyond the log's MaxWrite is refused")
							require.Len(t, l.Segments(), segs, "a refused batch changes nothing")
							continue
						}
						require.NoError(t, err, "append %d of a batch within the log's MaxWrite", i)
						require.Equal(t, uint64(len(want)), off)
						want = append(want, rec)
					}
					check := func() {
						for i, rec := range want {
							got, err := l.Read(uint64(i), nil)
							require.NoError(t, err, "record %d", i)
							require.Equal(t, rec, got, "record %d", i)
						}
						require.Equal(t, uint64(len(want)), l.EndOffset())
					}
					check()
					require.NoError(t, l.Close())
					l, err = Open("sim", o)
					require.NoError(t, err)
					check()
				})
			}
		}
	}
}
