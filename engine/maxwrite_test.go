package engine

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
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

// TestConcurrentAppendsMakeRoomOnce: eight appenders at once send batches
// that only the log's larger MaxWrite takes to a reopened log whose active
// segment (holding a record) was made with the smaller one: each that
// meets the old segment replaces it, or finds it replaced by another's
// roll, without reading the writer of a segment sealed meanwhile (run
// with -race), and every batch is acknowledged once and read back.
func TestConcurrentAppendsMakeRoomOnce(t *testing.T) {
	const oldMax, newMax, appenders, each = 16 << 10, 64 << 10, 8, 4
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	o := testOptions(d)
	o.MaxWrite, o.IndexInterval = oldMax, 0
	l, err := Open("sim", o)
	require.NoError(t, err)
	_, err = l.Append([]byte("small"))
	require.NoError(t, err)
	require.NoError(t, l.Close())
	o.MaxWrite = newMax
	l, err = Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	got := make([][]uint64, appenders)
	var wg sync.WaitGroup
	for g := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				off, err := l.Append(bytes.Repeat([]byte{byte(g*each + i + 1)}, oldMax+1))
				if !assert.NoError(t, err, "appender %d, batch %d", g, i) {
					return
				}
				got[g] = append(got[g], off)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, uint64(1+appenders*each), l.EndOffset())
	for g, offs := range got {
		for i, off := range offs {
			rec, err := l.Read(off, nil)
			require.NoError(t, err)
			require.Equal(t, bytes.Repeat([]byte{byte(g*each + i + 1)}, oldMax+1), rec, "appender %d, batch %d at %d", g, i, off)
		}
	}
}
