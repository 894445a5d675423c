package engine

import (
	"testing"

	"github.com/segstore/segstore/blockdev"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestHistogram(t *testing.T) {
	h := newHist([]float64{1, 10, 100})
	for _, v := range []float64{0.5, 1, 5, 50, 500, 7} {
		h.observe(v)
	}
	s := h.snapshot()
	assert.Equal(t, []uint64{2, 4, 5}, s.Counts, "cumulative: <=1, <=10, <=100")
	assert.Equal(t, uint64(6), s.Count, "500 only in +Inf")
	assert.InDelta(t, 563.5, s.Sum, 1e-9)
}

// TestStatsHistograms: every durable flush lands in both histograms.
func TestStatsHistograms(t *testing.T) {
	l, err := Open("sim", testOptions(blockdev.NewSimDir(blockdev.SimOptions{})))
	require.NoError(t, err)
	defer l.Close()
	appendN(t, l, 20)
	st := l.Stats()
	assert.Equal(t, uint64(st.Writes), st.FlushBatch.Count)
	assert.Equal(t, float64(st.Appends), st.FlushBatch.Sum, "every append was in one flush")
	assert.Positive(t, st.SyncLatency.Count)
	assert.LessOrEqual(t, st.SyncLatency.Count, uint64(st.Syncs))
}
