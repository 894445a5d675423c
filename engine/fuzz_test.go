package engine

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

// The formats' own decoders (metadata files, the manifest, segment
// footers, DURABLE) are fuzzed in package layout.

// FuzzReadRecordRun: a point read's walk over any bytes of a version 3
// file, from any index entry, never panics, never reads past the bound it
// is given, and returns only records whose checksums hold.
func FuzzReadRecordRun(f *testing.F) {
	dev := blockdev.NewSim(blockdev.SimOptions{})
	w, err := wal.Create(dev, 10, wal.Options{MaxWrite: 16 << 10})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 4 {
		if _, err := w.Append(bytes.Repeat([]byte{byte(i)}, 100*i), []byte("x"), bytes.Repeat([]byte{7}, 3000)); err != nil {
			f.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		f.Fatal(err)
	}
	img := make([]byte, 20<<10)
	if _, err := dev.ReadAt(img, 0); err != nil && !errors.Is(err, io.EOF) {
		f.Fatal(err)
	}
	hdr := w.Header()
	pool, err := alignedbuf.NewPool(64<<10, poolAlign)
	if err != nil {
		f.Fatal(err)
	}
	cc, err := cache.New(1 << 20)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(cc.Close)
	f.Add(img[wal.DataStart:], int64(wal.DataStart+wal.FrameHeaderLen), uint64(10), uint32(3), uint64(11), int64(12<<10))
	f.Add(img[wal.DataStart:], int64(wal.DataStart+wal.FrameHeaderLen+8), uint64(11), uint32(2), uint64(12), int64(16<<10))
	f.Fuzz(func(t *testing.T, data []byte, pos int64, off uint64, left uint32, want uint64, end int64) {
		if len(data) > 64<<10 || pos < wal.DataStart || end > int64(wal.DataStart+len(data)) || pos >= end || want < off || want-off > 1000 {
			return
		}
		file := make([]byte, wal.DataStart+len(data))
		copy(file, img[:wal.DataStart])
		copy(file[wal.DataStart:], data)
		l := &Log{readPool: pool, cache: cc}
		s := &segment{base: 10, dev: blockdev.NewSimFrom(file, blockdev.SimOptions{}), hdr: hdr}
		s.interval.Store(4096)
		s.visible.Store(&position{pos: end, off: want + 1})
		v, _, err := l.readRecordRun(s, indexEntry{off: off, pos: pos, left: left}, end, want, s.pointWindow())
		if err != nil {
			return
		}
		defer v.Release()
		rec, ok := chunk(v.Bytes()).record(want - off)
		require.True(t, ok, "the run holds the record asked for")
		require.LessOrEqual(t, len(rec), int(end-pos))
	})
}
