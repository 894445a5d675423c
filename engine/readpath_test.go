package engine

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
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

// OpenPlain and ReopenPlain pass the page-cache opens through, so a
// counted log still exports (mapped walks, sendfile); they count nothing,
// as they read no byte through the direct-I/O path.
func (d *countingDir) OpenPlain(name string, flag int) (blockdev.PlainFile, error) {
	return d.Dir.(blockdev.PlainOpener).OpenPlain(name, flag)
}

func (d *countingDir) ReopenPlain(dev blockdev.Device) (blockdev.PlainFile, error) {
	if c, ok := dev.(*countingDevice); ok {
		dev = c.Device
	}
	return d.Dir.(blockdev.PlainOpener).ReopenPlain(dev)
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
	testutil.FillXor(b, 0, byte(i)^gen)
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
			// The run started read-ahead: its device read is counted in
			// ReadDeviceBytes just after the device saw it.
			l.ra.wg.Wait()
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

// seqLog opens a log in a counting simulated directory with a cache far
// smaller than one frame (ristretto refuses every chunk), writes frames
// of batch records of size bytes, and reopens it, so that nothing is
// served from the fresh appends.
func seqLog(t *testing.T, frames, batch, size int) (*Log, *countingDir) {
	t.Helper()
	return seqLogCache(t, frames, batch, size, 64<<10)
}

// TestSequentialReadsAreReadAhead: a run of Read(i), Read(i+1), … over
// frames of 64 records of 2 KiB (128 KiB batches, across segments) reads
// each byte of the log from the device about once, although the cache
// refuses every chunk: the chunk in use is kept for the run's next reads
// and the chunks after it are read ahead. Every record past the first
// chunk is a read-ahead hit, whether the test waits for the read-ahead
// after each read or not (a read that overtakes it waits for the read
// under way instead of reading its record itself). A random read costs no
// read-ahead.
func TestSequentialReadsAreReadAhead(t *testing.T) {
	const frames, batch, size = 40, 64, 2 << 10
	data := int64(frames * batch * (size + 4))
	for _, wait := range []bool{true, false} {
		t.Run(fmt.Sprintf("wait=%v", wait), func(t *testing.T) {
			l, d := seqLog(t, frames, batch, size)
			defer l.Close()
			segs := l.Segments()
			require.Greater(t, len(segs), 2)
			// Open every segment's file (its footer is read at first use),
			// newest first: a few random reads.
			for k := len(segs) - 1; k >= 0; k-- {
				_, err := l.Read(segs[k].Base, nil)
				require.NoError(t, err)
			}
			l.ra.wg.Wait()
			st0 := l.Stats()
			before := d.bytes.Load()
			n := uint64(frames * batch)
			for i := range n {
				got, err := l.Read(i, nil)
				require.NoError(t, err)
				require.Equal(t, freshRecord(i, size, 0), got, "offset %d", i)
				if wait {
					l.ra.wg.Wait()
				}
			}
			st := l.Stats()
			read := d.bytes.Load() - before
			t.Logf("data %d KiB, device %d KiB in %d reads; %d read-ahead hits, %d KiB read ahead", data>>10, read>>10, d.reads.Load(), st.ReadAheadHits, st.ReadAheadBytes>>10)
			assert.Equal(t, read, st.ReadDeviceBytes-st0.ReadDeviceBytes, "every device byte counted")
			assert.Equal(t, int64(n), st.PointReads-st0.PointReads)
			slack := int64(4 * raSpan) // the read-ahead past the end, aligned edges
			assert.LessOrEqual(t, read, data+slack)
			assert.GreaterOrEqual(t, st.ReadAheadHits, int64(n)-2*batch, "all but the first frames' reads")
		})
	}
	t.Run("random", func(t *testing.T) {
		l, _ := seqLog(t, 8, batch, size)
		defer l.Close()
		for _, i := range []uint64{300, 17, 200, 450, 3, 99, 260} {
			_, err := l.Read(i, nil)
			require.NoError(t, err)
			l.ra.wg.Wait()
		}
		st := l.Stats()
		assert.Zero(t, st.ReadAheadBytes)
		assert.Zero(t, st.ReadAheadHits)
	})
}

// TestScansDoNotEvictThePointReadWorkingSet: a working set of point reads
// (32 records in scattered index intervals) cached, then an Iterator scan
// of the whole log (about twice the cache's budget): the working set is
// still cached: no read of it misses, no device byte is read for it.
func TestScansDoNotEvictThePointReadWorkingSet(t *testing.T) {
	d := &countingDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{})}
	o := testOptions(d)
	o.SegmentSize, o.MaxWrite = 1<<20, 64<<10
	l, err := Open("sim", o)
	require.NoError(t, err)
	end := appendOff(t, l, 700, 3000) // about 2 MiB: twice the 1 MiB cache
	require.NoError(t, l.Close())
	l, err = Open("sim", o) // nothing fresh: reads go through the cache
	require.NoError(t, err)
	defer l.Close()
	var set []uint64
	for i := range uint64(32) {
		set = append(set, (i*7919)%end)
	}
	readSet := func() {
		for _, off := range set {
			got, err := l.Read(off, nil)
			require.NoError(t, err)
			require.NoError(t, checkOffRecord(off, got, 3000))
		}
	}
	readSet()
	l.cache.Wait()
	readSet() // all hits now
	st := l.Stats()
	// Less the lookups of the sealed segments' index blocks, which go
	// through the cache too.
	require.Equal(t, int64(len(set)), st.Cache.Hits-l.indexHits.Load(), "the working set is cached")

	it := l.NewIterator(0)
	n := uint64(0)
	for it.Next() {
		n++
	}
	require.NoError(t, it.Err())
	require.NoError(t, it.Close())
	require.Equal(t, end, n)
	l.cache.Wait()

	before := l.Stats()
	readSet()
	after := l.Stats()
	assert.Equal(t, before.Cache.Misses, after.Cache.Misses, "a read of the working set missed after the scan")
	assert.Equal(t, before.ReadDeviceBytes-before.ReadAheadBytes, after.ReadDeviceBytes-after.ReadAheadBytes,
		"the working set was read from the device after the scan")
}

// TestLargeFreshBatchesAreCopiedBesideTheWrite: a batch of at least
// freshAside bytes, whose copy for the write-through cache is made by
// another goroutine while Append writes it, is read back with no device
// read and the bytes appended; an Append that fails drops that copy
// (the cache's memory in use is what it was before).
func TestLargeFreshBatchesAreCopiedBesideTheWrite(t *testing.T) {
	sim := blockdev.NewSimDir(blockdev.SimOptions{})
	d := &countingDir{Dir: sim}
	o := testOptions(d)
	o.SegmentSize, o.MaxWrite, o.CacheBytes = 4<<20, 1<<20, 16<<20 // fresh holds 2 MiB
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	const size, batch = 100 << 10, 3
	require.GreaterOrEqual(t, size*batch, freshAside)
	recs := func(first uint64, gen byte) [][]byte {
		r := make([][]byte, batch)
		for k := range r {
			r[k] = freshRecord(first+uint64(k), size, gen)
		}
		return r
	}
	for range 8 {
		first := l.EndOffset()
		got, err := l.Append(recs(first, 0)...)
		require.NoError(t, err)
		require.Equal(t, first, got)
		before := d.bytes.Load()
		for k := range uint64(batch) {
			rec, err := l.Read(first+k, nil)
			require.NoError(t, err)
			require.Equal(t, freshRecord(first+k, size, 0), rec)
		}
		require.Equal(t, before, d.bytes.Load(), "a fresh batch read from the device")
	}
	assert.Equal(t, int64(8*batch), l.Stats().FreshHits)

	inUse := func() int64 { st := l.cache.Stats(); return st.Mapped - st.Pooled }
	held := inUse()
	active := sim.File(segName(l.Segments()[len(l.Segments())-1].Base))
	active.FailNth(blockdev.OpSync, active.Calls(blockdev.OpSync)+1)
	_, err = l.Append(recs(l.EndOffset(), 1)...)
	require.Error(t, err)
	assert.Equal(t, held, inUse(), "the failed append's copy is dropped")
}
