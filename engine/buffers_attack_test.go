package engine

import (
	"bytes"
	"fmt"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// TestSharedWriteBuffersKeepEveryRecord: appenders of one log race its
// rolls (each new segment's writer taking the write buffers a retired
// one hands back at its seal), a TruncateBack between rounds (which
// closes the active writer and opens another on the rewrite), and a
// reopen with another MaxWrite, in every sync mode; every record
// acknowledged and not cut reads back exact, from the log and after a
// reopen, and nothing else is there.
func TestSharedWriteBuffersKeepEveryRecord(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncNever} {
		t.Run(fmt.Sprint("mode ", mode), func(t *testing.T) {
			done := make(chan struct{})
			go func() { defer close(done); sharedBuffersRounds(t, mode) }()
			select {
			case <-done:
			case <-time.After(2 * time.Minute): // a wedge, not a speed
				var b bytes.Buffer
				_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
				t.Fatalf("wedged:\n%s", b.String())
			}
		})
	}
}

func sharedBuffersRounds(t *testing.T, mode SyncMode) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	opts := testOptions(dir)
	opts.SyncMode, opts.SyncInterval, opts.NoPreallocate = mode, time.Millisecond, true
	want := map[uint64][]byte{}
	var mu sync.Mutex
	l, err := Open("sim", opts)
	require.NoError(t, err)
	for round := range 4 {
		if round == 2 { // the active segment resumes with its file's MaxWrite, new ones take 64 KiB
			require.NoError(t, l.Close())
			opts.MaxWrite = 64 << 10
			l, err = Open("sim", opts)
			require.NoError(t, err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for a := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range 40 {
					n := 1 + (a+k)%4
					recs := make([][]byte, n)
					for j := range recs {
						recs[j] = fmt.Appendf(nil, "round %d appender %d batch %d record %d %s", round, a, k, j, bytes.Repeat([]byte{byte('a' + (k+j)%26)}, (a*131+k*37+j*7)%3000))
					}
					first, err := l.Append(recs...)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					for j, r := range recs {
						want[first+uint64(j)] = r
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		require.NoError(t, l.Sync())
		// Cut into the middle of what this round appended.
		end := l.EndOffset()
		cut := end - uint64(len(want))/uint64(3*(round+1))
		require.NoError(t, l.TruncateBack(cut))
		for off := cut; off < end; off++ {
			delete(want, off)
		}
		checkRecords(t, l, want, fmt.Sprintf("round %d", round))
	}
	require.Greater(t, len(l.Segments()), 4, "the appends rolled")
	require.NoError(t, l.Close())
	l, err = Open("sim", opts)
	require.NoError(t, err)
	defer l.Close()
	checkRecords(t, l, want, "after a reopen")
}

func checkRecords(t *testing.T, l *Log, want map[uint64][]byte, when string) {
	t.Helper()
	require.Equal(t, uint64(len(want)), l.EndOffset()-l.StartOffset(), "%s: records", when)
	for off := l.StartOffset(); off < l.EndOffset(); off++ {
		got, err := l.Read(off, nil)
		require.NoError(t, err, "%s: offset %d", when, off)
		require.Equal(t, want[off], got, "%s: offset %d", when, off)
	}
}
