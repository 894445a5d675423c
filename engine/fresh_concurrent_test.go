package engine

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestFreshUnderConcurrentAppendsAndTruncateBack: four appenders append
// batches of 1 to 40 records (some batches larger than the write-through
// cache's bound of 32 KiB) across rolls while two readers read offsets
// already acknowledged, each of which must read the bytes its append gave
// it; between rounds TruncateBack cuts a random tail, and the offsets cut
// are appended again with other bytes (the next generation), which every
// later read returns, never the old ones.
func TestFreshUnderConcurrentAppendsAndTruncateBack(t *testing.T) {
	opts := realOptions()
	opts.CacheBytes = 256 << 10 // the write-through cache holds 32 KiB
	l, err := Open(t.TempDir(), opts)
	require.NoError(t, err)
	defer l.Close()
	rng := rand.New(rand.NewPCG(5, 6))
	var mu sync.RWMutex
	want := map[uint64][]byte{} // every acknowledged offset's bytes; guarded by mu
	for gen := range 4 {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		stop := make(chan struct{})
		for a := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 40 {
					n := 1 + (a*7+i*3)%10
					if i%17 == 0 {
						n = 40 // 40 of ~1 KiB: past the bound
					}
					recs := make([][]byte, n)
					for k := range recs {
						recs[k] = fmt.Appendf(nil, "gen %d appender %d batch %d record %d %0*d", gen, a, i, k, 100+(i*k*37)%1000, 0)
					}
					first, err := l.Append(recs...)
					if err != nil {
						errs <- err
						return
					}
					mu.Lock()
					for k, r := range recs {
						want[first+uint64(k)] = r
					}
					mu.Unlock()
				}
			}()
		}
		var readers sync.WaitGroup
		for r := range 2 {
			readers.Add(1)
			go func() {
				defer readers.Done()
				rr := rand.New(rand.NewPCG(uint64(gen), uint64(r)))
				for {
					select {
					case <-stop:
						return
					default:
					}
					end := l.DurableOffset()
					if end == 0 {
						continue
					}
					off := end - 1 - rr.Uint64N(min(end, 200))
					mu.RLock()
					w, ok := want[off]
					mu.RUnlock()
					if !ok {
						continue // acknowledged, its appender has not noted it yet
					}
					got, err := l.Read(off, nil)
					if err != nil {
						errs <- fmt.Errorf("offset %d: %w", off, err)
						return
					}
					if string(got) != string(w) {
						errs <- fmt.Errorf("offset %d reads %.30q, want %.30q", off, got, w)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(stop)
		readers.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}
		end := l.EndOffset()
		for off := l.StartOffset(); off < end; off++ {
			got, err := l.Read(off, nil)
			require.NoError(t, err, "offset %d", off)
			require.Equal(t, string(want[off]), string(got), "offset %d, generation %d", off, gen)
		}
		from := end - 1 - rng.Uint64N(min(end, 300))
		require.NoError(t, l.TruncateBack(from))
		for off := from; off < end; off++ {
			delete(want, off)
		}
	}
	require.Greater(t, len(l.Segments()), 3, "the appends rolled")
	require.Positive(t, l.Stats().FreshHits, "reads were served by the write-through cache")
}
