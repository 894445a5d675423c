package engine

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

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
	s := &segment{base: 100, interval: 4096, index: []indexEntry{{off: 100, pos: wal.DataStart, time: 1}, {off: 140, pos: wal.DataStart + 5000, time: 2}}}
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
