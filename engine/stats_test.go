package engine

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// TestStatsCountersNeverGoBack: Stats read while an appender fills and
// rolls segments (each roll moves the active segment's counters into the
// sealed sum) never report fewer appends, records, writes or syncs than a
// call before. The appender makes 3,000 appends (about 50 rolls); the
// reader takes snapshots until it is done.
func TestStatsCountersNeverGoBack(t *testing.T) {
	o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
	o.SyncMode = SyncNever
	l, err := Open("sim", o)
	require.NoError(t, err)
	defer l.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		rec := make([]byte, 2000)
		for range 3000 { // about 50 rolls
			if _, err := l.Append(rec); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var last Stats
	for i := 0; ; i++ {
		select {
		case <-done:
			return
		default:
		}
		st := l.Stats()
		require.GreaterOrEqual(t, st.Appends, last.Appends, "Appends, snapshot %d", i)
		require.GreaterOrEqual(t, st.Records, last.Records, "Records, snapshot %d", i)
		require.GreaterOrEqual(t, st.Writes, last.Writes, "Writes, snapshot %d", i)
		require.GreaterOrEqual(t, st.Syncs, last.Syncs, "Syncs, snapshot %d", i)
		last = st
	}
}
