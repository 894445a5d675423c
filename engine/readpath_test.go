package engine

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// countingDir counts the bytes and calls of every device read made through
// the devices it opens: the blockdev seam, where a test sees what a read
// costs the device.
type countingDir struct {
	blockdev.Dir
	reads, bytes atomic.Int64
}

func (d *countingDir) Open(name string, opts blockdev.Options) (blockdev.Device, error) {
	dev, err := d.Dir.Open(name, opts)
	if err != nil {
		return nil, err
	}
	return &countingDevice{Device: dev, d: d}, nil
}

type countingDevice struct {
	blockdev.Device
	d *countingDir
}

func (c *countingDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.Device.ReadAt(p, off)
	c.d.reads.Add(1)
	c.d.bytes.Add(int64(n))
	return n, err
}

// freshRecord is record i of the fresh-append tests (size bytes, its
// offset spelled out at the start; the rest varies with gen).
func freshRecord(i uint64, size int, gen byte) []byte {
	b := make([]byte, size)
	for k := range b {
		b[k] = byte(k) ^ byte(i) ^ gen
	}
	copy(b, fmt.Sprintf("record-%08d/%d", i, gen))
	return b
}

// TestFreshAppendsAreReadFromMemory: records just appended (batches of 1,
// 16 and 64 records of 1 KiB, across rolls) are read back with no device
// read; what the bound pushed out is read from the device, and the Stats
// counters say how many reads there were and exactly what they read (the
// bytes the device saw); after TruncateBack the offsets appended again
// read their new bytes, never the old ones; a record not yet durable is
// not shown.
func TestFreshAppendsAreReadFromMemory(t *testing.T) {
	for _, batch := range []int{1, 16, 64} {
		t.Run(fmt.Sprintf("batch=%d", batch), func(t *testing.T) {
			d := &countingDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{})}
			o := testOptions(d) // a 1 MiB cache: 128 KiB of fresh batches
			o.SegmentSize, o.MaxWrite = 256<<10, 128<<10
			l, err := Open("sim", o)
			require.NoError(t, err)
			defer l.Close()
			const size = 1 << 10
			appendBatch := func(gen byte) uint64 {
				recs := make([][]byte, batch)
				first := l.EndOffset()
				for k := range recs {
					recs[k] = freshRecord(first+uint64(k), size, gen)
				}
				got, err := l.Append(recs...)
				require.NoError(t, err)
				require.Equal(t, first, got)
				return first
			}
			// Each batch read back at once, record by record: no device read.
			for range 600 / batch {
				first := appendBatch(0)
				before := d.bytes.Load()
				for k := range uint64(batch) {
					got, err := l.Read(first+k, nil)
					require.NoError(t, err)
					require.Equal(t, freshRecord(first+k, size, 0), got)
				}
				require.Equal(t, before, d.bytes.Load(), "a fresh batch read from the device")
			}
			st := l.Stats()
			require.Greater(t, st.Segments, 2, "the appends rolled segments")
			assert.Equal(t, int64(600/batch*batch), st.PointReads)
			assert.Equal(t, st.PointReads, st.FreshHits)
			assert.Zero(t, st.ReadDeviceBytes)

			// The oldest records are past the bound: read from the device,
			// and the counter is exactly what the device read for them.
			before, reads := d.bytes.Load(), st.PointReads
			for i := range uint64(32) {
				got, err := l.Read(i, nil)
				require.NoError(t, err)
				require.Equal(t, freshRecord(i, size, 0), got)
			}
			st = l.Stats()
			assert.Positive(t, st.ReadDeviceBytes)
			assert.Equal(t, d.bytes.Load()-before, st.ReadDeviceBytes, "ReadDeviceBytes is what the device read")
			assert.Equal(t, reads+32, st.PointReads)
			assert.Equal(t, reads, st.FreshHits)

			// Cut back into the active segment and append other bytes.
			end := l.EndOffset()
			from := end - uint64(batch)*2
			require.NoError(t, l.TruncateBack(from))
			for l.EndOffset() < end {
				appendBatch(1)
			}
			for i := from; i < end; i++ {
				got, err := l.Read(i, nil)
				require.NoError(t, err)
				require.Equal(t, freshRecord(i, size, 1), got, "offset %d after TruncateBack", i)
			}
		})
	}
}

// TestFreshAppendsAreNotShownBeforeDurable: with SyncNever an appended
// batch is in memory before it is durable; Read says it is past the
// durable end until a Sync.
func TestFreshAppendsAreNotShownBeforeDurable(t *testing.T) {
	o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
	o.SyncMode = SyncNever
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	first, err := l.Append([]byte("a"), []byte("b"))
	require.NoError(t, err)
	_, err = l.Read(first, nil)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.NoError(t, l.Sync())
	got, err := l.Read(first+1, nil)
	require.NoError(t, err)
	assert.Equal(t, []byte("b"), got)
	assert.Equal(t, int64(1), l.Stats().FreshHits)
}
