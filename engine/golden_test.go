package engine

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/segstore/segstore/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// goldenV2 is a store written by wal format version 2 (engine footer
// version 1): six sealed segments, an active one, MANIFEST (with its
// clean-close record) and START. It was generated once, by the code that
// wrote that format, with
//
//	go test ./engine -run TestGenerateGoldenStore -golden-store=testdata/golden-v2
//
// Regenerating it with a newer build would write the newer format: it is
// kept as the evidence that stores of the old format stay readable.
const goldenV2 = "testdata/golden-v2"

var goldenOut = flag.String("golden-store", "", "write the golden store into this directory")

// goldenBatches is the content of the golden store: batches of varying
// size and record lengths (some past a 4 KiB block), offsets from 0.
func goldenBatches() [][][]byte {
	var out [][][]byte
	off := 0
	for b := 0; b < 70; b++ {
		n := 1 + (b*7)%23
		batch := make([][]byte, n)
		for i := range batch {
			size := (off*37)%300 + 1
			if off%17 == 0 {
				size = 4095 + off%3
			}
			batch[i] = goldenRecord(off, size)
			off++
		}
		out = append(out, batch)
	}
	return out
}

func goldenRecord(off, size int) []byte {
	return testutil.Labelled(fmt.Sprintf("golden-%d", off), byte(off), size)
}

func goldenOptions() Options {
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.IndexInterval, o.NoPreallocate, o.Logger = 64<<10, 16<<10, 4096, true, quiet
	o.Now = func() time.Time { return time.Unix(1_700_000_000, 0) }
	return o
}

func TestGenerateGoldenStore(t *testing.T) {
	if *goldenOut == "" {
		t.Skip("only with -golden-store=DIR")
	}
	require.NoError(t, os.MkdirAll(*goldenOut, 0o755))
	l, err := Open(*goldenOut, goldenOptions())
	require.NoError(t, err)
	for _, b := range goldenBatches() {
		_, err := l.Append(b...)
		require.NoError(t, err)
	}
	require.NoError(t, l.TruncateFront(3))
	require.NoError(t, l.Close())
	for _, junk := range []string{lockName, durableName} {
		require.NoError(t, os.Remove(filepath.Join(*goldenOut, junk)))
	}
}

// TestGoldenStoreOfFormatVersion2 opens the version 2 store read-only and
// read-write, reads every record, iterates, walks the sealed segments'
// mappings and verifies it; the read-write log then appends and reopens.
func TestGoldenStoreOfFormatVersion2(t *testing.T) {
	var want [][]byte
	for _, b := range goldenBatches() {
		want = append(want, b...)
	}
	const start = 3
	check := func(t *testing.T, l *Log, end int) {
		t.Helper()
		require.Equal(t, uint64(start), l.StartOffset())
		require.Equal(t, uint64(end), l.EndOffset())
		for off := start; off < end; off++ {
			got, err := l.Read(uint64(off), nil)
			require.NoError(t, err, "offset %d", off)
			require.Equal(t, want[off], got, "offset %d", off)
		}
		it := l.NewIterator(start)
		n := start
		for it.Next() {
			require.Equal(t, uint64(n), it.Offset())
			require.Equal(t, want[n], it.Record(), "offset %d", n)
			n++
		}
		require.NoError(t, it.Err())
		require.NoError(t, it.Close())
		require.Equal(t, end, n)
		segs := l.Segments()
		for _, si := range segs {
			if !si.Sealed {
				continue
			}
			v, err := l.OpenSegment(si.Base)
			require.NoError(t, err)
			m, err := v.Mmap()
			require.NoError(t, err)
			mi := m.NewIterator()
			k := int(si.Base)
			for mi.Next() {
				require.Equal(t, want[k], mi.Record(), "mapped offset %d", k)
				k++
			}
			require.NoError(t, mi.Err())
			require.Equal(t, int(si.Next), k)
			require.NoError(t, m.Close())
			require.NoError(t, v.Close())
		}
	}

	t.Run("read-only", func(t *testing.T) {
		dir := copyStore(t, goldenV2)
		o := goldenOptions()
		o.ReadOnly = true
		l, err := Open(dir, o)
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(l.Segments()), 4, "three sealed segments and an active one")
		check(t, l, len(want))
		require.NoError(t, l.Close())
		rep, err := Verify(dir, VerifyOptions{})
		require.NoError(t, err)
		assert.Empty(t, rep.Problems)
		assert.Equal(t, uint64(len(want)), rep.End)
	})
	t.Run("read-write", func(t *testing.T) {
		dir := copyStore(t, goldenV2)
		l, err := Open(dir, goldenOptions())
		require.NoError(t, err)
		check(t, l, len(want))
		// The old active segment takes appends in its own version; the
		// segments rolled after it are written by this build.
		for i := 0; i < 30; i++ {
			r := goldenRecord(len(want), 100+i*300)
			_, err := l.Append(r)
			require.NoError(t, err)
			want = append(want, r)
		}
		check(t, l, len(want))
		require.NoError(t, l.Close())
		l, err = Open(dir, goldenOptions())
		require.NoError(t, err)
		check(t, l, len(want))
		require.NoError(t, l.Close())
		rep, err := Verify(dir, VerifyOptions{})
		require.NoError(t, err)
		assert.Empty(t, rep.Problems)
	})
}
