package wal

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// recordSize is the size of the record at offset off in the tests that
// write testutil.Record(off, recordSize(off)).
func recordSize(off uint64) int { return int(off*37%700) + 1 }

// batch returns n records starting at offset first.
func batch(first uint64, n int) [][]byte {
	recs := make([][]byte, n)
	for i := range recs {
		o := first + uint64(i)
		recs[i] = testutil.Record(o, recordSize(o))
	}
	return recs
}

// readAll scans dev and returns every record by offset, failing the test on
// a scan error.
func readAll(t testing.TB, dev blockdev.Device) (map[uint64][]byte, *Recovery) {
	t.Helper()
	got, rec, err := tryReadAll(dev)
	require.NoError(t, err)
	return got, rec
}

func tryReadAll(dev blockdev.Device) (map[uint64][]byte, *Recovery, error) {
	s, err := NewScanner(dev)
	if err != nil {
		return nil, nil, err
	}
	got := map[uint64][]byte{}
	for s.Next() {
		f := s.Frame()
		Records(s.Header().Version, f.Payload, func(i int, r []byte) bool {
			got[f.First+uint64(i)] = append([]byte(nil), r...)
			return true
		})
	}
	if s.Err() != nil {
		return nil, nil, s.Err()
	}
	return got, &Recovery{Header: s.Header(), End: s.End(), NextOffset: s.NextOffset(), Torn: s.Torn()}, nil
}

func newSim(seed uint64) *blockdev.Sim {
	return blockdev.NewSim(blockdev.SimOptions{Name: fmt.Sprint("seed", seed), Seed: seed})
}

func newFileDev(t testing.TB, buffered bool) *blockdev.File {
	d, err := blockdev.Open(filepath.Join(t.TempDir(), "wal"), blockdev.Options{Create: true, Buffered: buffered})
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

// durableOf is the position a frame's durable mark names, or -1 for none.
func durableOf(h FrameHeader, pos int64) int64 {
	if d, ok := h.DurableBefore(pos); ok {
		return d
	}
	return -1
}
