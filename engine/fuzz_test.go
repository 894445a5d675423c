package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

// The engine's decoders of bytes read from disk (metadata files, the
// manifest, segment footers) get arbitrary input: they must never panic,
// and what they accept must encode back to the same bytes.

func FuzzDecodeMeta(f *testing.F) {
	payload := binary.LittleEndian.AppendUint64(nil, 1234)
	good := make([]byte, metaHeader, metaHeader+len(payload)+4)
	copy(good, metaMagic)
	binary.LittleEndian.PutUint32(good[8:], metaStart)
	binary.LittleEndian.PutUint32(good[12:], uint32(len(payload)))
	good = append(good, payload...)
	good = binary.LittleEndian.AppendUint32(good, crc32.Checksum(good, castagnoli))
	f.Add(good)
	f.Add(good[:10])
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := decodeMeta(b, "START", metaStart)
		if err != nil {
			return
		}
		end := metaHeader + len(p)
		require.Equal(t, b[metaHeader:end], p)
		require.Equal(t, binary.LittleEndian.Uint32(b[end:]), crc32.Checksum(b[:end], castagnoli))
	})
}

func FuzzDecodeManifest(f *testing.F) {
	entries := []manifestEntry{
		{base: 0, next: 10, dataEnd: wal.DataStart + 100, size: wal.DataStart + 200, sealedAt: 5, firstTime: 1, crc: 7},
		{base: 10, next: 30, dataEnd: wal.DataStart + 900, size: wal.DataStart + 1000, sealedAt: 9, firstTime: 6, crc: 8},
	}
	f.Add(encodeManifest(entries, nil))
	f.Add(encodeManifest(entries, &cleanEnd{base: 30, end: wal.DataStart + 64, size: 1 << 20}))
	f.Add([]byte{255, 255, 255, 255, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, clean, err := decodeManifest(b)
		if err != nil {
			return
		}
		var back []manifestEntry
		for i := range len(m) {
			back = append(back, m[binary.LittleEndian.Uint64(b[8+i*manifestEntryLen:])])
		}
		if len(back) != int(binary.LittleEndian.Uint32(b)) {
			return // two entries for one base: the later wins, nothing to compare
		}
		want := bytes.Clone(b)
		clear(want[4:8]) // reserved bytes (written as zeros, not read)
		for i := range back {
			clear(want[8+i*manifestEntryLen+52 : 8+(i+1)*manifestEntryLen])
		}
		require.Equal(t, want, encodeManifest(back, clean))
	})
}

func FuzzDecodeFooter(f *testing.F) {
	s := &segment{base: 100, index: []indexEntry{{off: 100, pos: wal.DataStart, time: 1}, {off: 140, pos: wal.DataStart + 5000, time: 2}}}
	s.interval.Store(4096)
	good, _ := s.encodeFooter(180, wal.DataStart+9000, math.MaxInt)
	f.Add(good, uint64(180), int64(wal.DataStart+9000))
	f.Add(good[:20], uint64(180), int64(wal.DataStart+9000))
	f.Fuzz(func(t *testing.T, b []byte, next uint64, dataEnd int64) {
		s := &segment{base: 100}
		s.visible.Store(&position{})
		if err := s.decodeFooter(&wal.Footer{Pos: dataEnd, Next: next, Data: b}); err != nil {
			return
		}
		again, _ := s.encodeFooter(next, dataEnd, math.MaxInt)
		want := bytes.Clone(b[:len(again)])
		clear(want[4:8]) // reserved (written as zeros, not read)
		require.Equal(t, want, again)
	})
}

// FuzzDecodeFooterV2: a version 2 footer (index blocks, summary, trailer)
// of any bytes is refused or decodes to entries that encode back to the
// same bytes.
func FuzzDecodeFooterV2(f *testing.F) {
	const segID, base = 0xfeed, 100
	dataEnd := int64(wal.DataStart + 9000)
	var index []indexEntry
	for i := range 300 { // three blocks
		index = append(index, indexEntry{off: base + uint64(2*i), pos: wal.DataStart + wal.FrameHeaderLen + int64(20*i), time: int64(i), back: wal.FrameHeaderLen, left: 2})
	}
	good := encodeFooterV2(segID, base, 600, dataEnd, 4096, index)
	f.Add(good, uint64(base+600), dataEnd)
	f.Add(encodeFooterV2(segID, base, 0, wal.DataStart, 4096, nil), uint64(base), int64(wal.DataStart))
	f.Add(good[:100], uint64(base+600), dataEnd)
	f.Fuzz(func(t *testing.T, b []byte, next uint64, pos int64) {
		if pos < 0 || pos > 1<<40 {
			return
		}
		ix, interval, err := decodeFooterV2(b, segID, base, next, pos)
		if err != nil {
			return
		}
		again := encodeFooterV2(segID, base, next-base, pos, interval, ix)
		want := bytes.Clone(b)
		clear(want[4:8]) // the head's flags: written as zeros, not read
		tr := want[len(want)-footerTrailerLen:]
		clear(tr[4:8]) // the trailer's flags
		for k := range (len(ix) + entriesPerBlock - 1) / entriesPerBlock {
			_, at := footerV2Size(pos, len(ix))
			clear(want[at-pos-wal.FrameHeaderLen+int64(k*indexBlockLen)+24:][:8]) // a block's reserved bytes
		}
		require.Equal(t, want, again)
	})
}

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
