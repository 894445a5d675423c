package wal

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/segstore/segstore/blockdev"
)

// versionShapes is the write matrix the format versions are compared on:
// record size × batch.
var versionShapes = []struct{ size, batch int }{{1 << 10, 1}, {1 << 10, 64}, {64 << 10, 16}}

// BenchmarkEncodeVersion is the CPU cost of encoding one frame in format
// version 2 (a length before each record, one checksum over the frame) and
// version 3 (a checksum for each record as well), in one run:
//
//	go test ./wal -run NONE -bench 'BenchmarkEncodeVersion|BenchmarkAppendVersion' -count 5
func BenchmarkEncodeVersion(b *testing.B) {
	for _, sh := range versionShapes {
		recs := shapeRecords(sh.size, sh.batch)
		for _, v := range []uint32{2, 3} {
			b.Run(fmt.Sprintf("size=%d/batch=%d/v=%d", sh.size, sh.batch, v), func(b *testing.B) {
				buf := make([]byte, FrameSize(FileHeader{Version: v}.PayloadSize(recs)))
				b.SetBytes(int64(len(buf)))
				for b.Loop() {
					encodeFrame(buf, v, 7, 4096, 0, 1, 2, recs)
				}
			})
		}
	}
}

// BenchmarkAppendVersion is durable appends (one appender, O_DIRECT,
// pre-zeroed file) to a file of format version 2 and one of version 3.
func BenchmarkAppendVersion(b *testing.B) {
	for _, sh := range versionShapes {
		recs := shapeRecords(sh.size, sh.batch)
		for _, v := range []uint32{2, 3} {
			b.Run(fmt.Sprintf("size=%d/batch=%d/v=%d", sh.size, sh.batch, v), func(b *testing.B) {
				w := versionWriter(b, v, 256<<20)
				b.SetBytes(int64(sh.size * sh.batch))
				for b.Loop() {
					if _, err := w.Append(recs...); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

func shapeRecords(size, n int) [][]byte {
	recs := make([][]byte, n)
	for i := range recs {
		recs[i] = bytes.Repeat([]byte{byte(i + 1)}, size)
	}
	return recs
}

// versionWriter is a writer of a pre-zeroed O_DIRECT file of format
// version v.
func versionWriter(b *testing.B, v uint32, prealloc int64) *Writer {
	dev, err := blockdev.Open(filepath.Join(b.TempDir(), "v.wal"), blockdev.Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dev.Close() })
	w, err := Create(dev, 0, Options{Preallocate: prealloc, PreZero: true, MaxWrite: 8 << 20, Version: v})
	if err != nil {
		b.Fatal(err)
	}
	return w
}
