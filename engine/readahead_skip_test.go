package engine

import (
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

var errWrongBytes = errors.New("a read returned another record's bytes")

// gateDir opens devices whose reads starting at or past from (while set)
// wait until the gate opens: a test holds a read-ahead read in flight
// with it, for as long as it needs, without a clock.
type gateDir struct {
	blockdev.Dir
	from    atomic.Int64 // 0: no gate
	open    chan struct{}
	once    sync.Once
	blocked atomic.Int64 // reads that waited at the gate
}

func (d *gateDir) Open(name string, opts blockdev.Options) (blockdev.Device, error) {
	dev, err := d.Dir.Open(name, opts)
	if err != nil {
		return nil, err
	}
	return &gateDevice{Device: dev, d: d}, nil
}

func (d *gateDir) release() { d.once.Do(func() { close(d.open) }) }

type gateDevice struct {
	blockdev.Device
	d *gateDir
}

func (g *gateDevice) ReadAt(p []byte, off int64) (int, error) {
	if from := g.d.from.Load(); from > 0 && off >= from {
		g.d.blocked.Add(1)
		<-g.d.open
	}
	return g.Device.ReadAt(p, off)
}

// TestSkippedRecordIsReadAtOnce: a run of point reads reaches a record
// longer than a stream's read-ahead bound, which read-ahead leaves to the
// point reads and skips (it reads on from the index entry after it). The
// read-ahead read after it is held in flight at the device. The point read
// of the long record must not wait for that read, which can never hold
// it: it reads the record on its own at once (counted: read-ahead waits,
// and the read returns while the read-ahead read is still held). Then the
// gate opens and the rest of the run reads its records exactly.
func TestSkippedRecordIsReadAtOnce(t *testing.T) {
	const maxWrite = 16 << 20
	path, o := boundLogOptions(t, 0, maxWrite)
	l, err := Open(path, o)
	require.NoError(t, err)
	var want []int
	add := func(n int) {
		_, err := l.Append(boundRecord(uint64(len(want)), n))
		require.NoError(t, err)
		want = append(want, n)
	}
	for i := 0; i < 100; i++ {
		add(3000 + i)
	}
	long := uint64(len(want))
	add(raStreamBytes + 1)
	var recs [][]byte
	for j := 0; j < 200; j++ {
		recs = append(recs, boundRecord(uint64(len(want)), 3000+j))
		want = append(want, 3000+j)
	}
	_, err = l.Append(recs...)
	require.NoError(t, err)
	require.NoError(t, l.Close())

	d, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	gd := &gateDir{Dir: d, open: make(chan struct{})}
	o.Dir = gd
	l, err = Open(path, o)
	require.NoError(t, err)
	defer l.Close()
	defer gd.release() // before Close, which waits for the read held at the gate
	s := (*l.segs.Load())[0]
	after, _, _, err := l.lookup(s, long+1, s.vis())
	require.NoError(t, err)
	require.Greater(t, after.off, long, "an index entry after the long record")
	gd.from.Store(after.pos &^ 511) // read-ahead's read after the long record waits

	var buf []byte
	for off := uint64(0); off < long; off++ {
		got, err := l.Read(off, buf[:0])
		require.NoError(t, err, "read %d", off)
		require.Equal(t, string(boundRecord(off, want[off])), string(got), "read %d", off)
		buf = got
	}
	// Read-ahead has skipped the long record and its read after it is in
	// flight, held at the gate.
	skipped := func() bool {
		l.ra.mu.Lock()
		defer l.ra.mu.Unlock()
		for i := range l.ra.streams {
			if st := &l.ra.streams[i]; st.run > 0 && st.skip > long && st.inflight > 0 {
				return true
			}
		}
		return false
	}
	for !skipped() || gd.blocked.Load() == 0 {
		runtime.Gosched()
	}
	waits := l.ra.waits.Load()
	done := make(chan error, 1)
	go func() {
		got, err := l.Read(long, nil)
		if err == nil && string(got) != string(boundRecord(long, want[long])) {
			err = errWrongBytes
		}
		done <- err
	}()
	// Either the read returns, or it waits for read-ahead (the bug).
	var readErr error
	returned := false
	for !returned && l.ra.waits.Load() == waits {
		select {
		case readErr = <-done:
			returned = true
		default:
			runtime.Gosched()
		}
	}
	require.Equal(t, waits, l.ra.waits.Load(), "the read of the skipped record waited for read-ahead beyond it")
	gd.release()
	if !returned {
		readErr = <-done
	}
	require.NoError(t, readErr, "read %d", long)
	for off := long + 1; off < uint64(len(want)); off++ {
		got, err := l.Read(off, buf[:0])
		require.NoError(t, err, "read %d", off)
		require.Equal(t, string(boundRecord(off, want[off])), string(got), "read %d", off)
		buf = got
	}
	require.NoError(t, l.Close())
	require.Zero(t, l.ra.held.Load(), "every reservation given back at Close")
}
