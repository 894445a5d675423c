package engine_test

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/engine"
)

// TestSealedSegmentSizes: what Options.SegmentSize's doc says of how full
// a segment is when it is sealed holds, for batches from one small
// record to nearly MaxWrite: every sealed file holds at least SegmentSize
// less MaxWrite, and at most SegmentSize plus one index interval, one
// MaxWrite (the batch that made it full) and a block for its footer.
func TestSealedSegmentSizes(t *testing.T) {
	const segSize, maxWrite, interval, footer = 256 << 10, 64 << 10, 16 << 10, 4096
	for _, batch := range []struct{ records, size int }{{1, 100}, {16, 1000}, {1, 30 << 10}, {2, 20 << 10}, {1, 60000}} {
		t.Run(fmt.Sprintf("%dx%d", batch.records, batch.size), func(t *testing.T) {
			opts := engine.DefaultOptions()
			opts.SegmentSize, opts.MaxWrite, opts.IndexInterval = segSize, maxWrite, interval
			opts.SyncMode = engine.SyncNever // rolling does not depend on it
			l, err := engine.Open(filepath.Join(t.TempDir(), "log"), opts)
			require.NoError(t, err)
			defer l.Close()
			recs := make([][]byte, batch.records)
			for i := range recs {
				recs[i] = make([]byte, batch.size)
			}
			for len(l.Segments()) < 5 {
				_, err := l.Append(recs...)
				require.NoError(t, err)
			}
			require.NoError(t, l.Sync()) // the last roll's seal, which runs beside the appends, is done
			for _, s := range l.Segments()[:4] {
				require.True(t, s.Sealed)
				assert.GreaterOrEqual(t, s.Bytes, int64(segSize-maxWrite), "segment %d", s.Base)
				assert.LessOrEqual(t, s.Bytes, int64(segSize+interval+maxWrite+footer), "segment %d", s.Base)
			}
		})
	}
}
