package engine

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestReadOnlyOpenBesideRollsAndRetention: read-only logs opened again and
// again in this process while the writer appends, rolls and drops its
// oldest segments by retention (so the manifest and the segment files
// change while each open reads them) either open, showing a contiguous log
// whose every record reads its own bytes, or refuse with ErrOutOfRange (a
// segment removed under the open); none shows a record the writer has not
// acknowledged.
func TestReadOnlyOpenBesideRollsAndRetention(t *testing.T) {
	path := t.TempDir()
	opts := realOptions()
	opts.RetentionBytes = 4 * opts.SegmentSize
	writer, err := Open(path, opts)
	require.NoError(t, err)
	defer writer.Close()
	rec := func(off uint64) []byte { return fmt.Appendf(nil, "record %d %0500d", off, off) }
	done := make(chan error, 1)
	go func() {
		for range 700 {
			off := writer.EndOffset()
			recs := make([][]byte, 4)
			for k := range recs {
				recs[k] = rec(off + uint64(k))
			}
			if _, err := writer.Append(recs...); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	ro := realOptions()
	ro.ReadOnly = true
	opened := 0
	for {
		select {
		case err := <-done:
			require.NoError(t, err)
			require.Positive(t, opened)
			require.Positive(t, writer.StartOffset(), "retention dropped segments")
			return
		default:
		}
		r, err := Open(path, ro)
		if errors.Is(err, ErrOutOfRange) {
			continue
		}
		require.NoError(t, err)
		opened++
		start, end := r.StartOffset(), r.DurableOffset()
		require.LessOrEqual(t, end, writer.DurableOffset(), "nothing unacknowledged")
		for _, off := range []uint64{start, (start + end) / 2, end - 1} {
			if end == start {
				break
			}
			got, err := r.Read(off, nil)
			if errors.Is(err, ErrOutOfRange) {
				continue // dropped by retention since
			}
			require.NoError(t, err, "offset %d of [%d, %d)", off, start, end)
			require.Equal(t, string(rec(off)), string(got))
		}
		segs := r.Segments()
		for i := 1; i < len(segs); i++ {
			require.Equal(t, segs[i-1].Next, segs[i].Base, "contiguous")
		}
		require.NoError(t, r.Close())
	}
}
