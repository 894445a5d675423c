package engine

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReadPatternsThatAreNoRuns: readers, none reading two offsets in
// ascending order, interleaved, start no read-ahead: strided readers, and
// readers each reading down from offsets next to each other's (whose
// reads of off-2, off-1 and off, by three of them, come in ascending
// order).
func TestReadPatternsThatAreNoRuns(t *testing.T) {
	const frames, batch, size = 400, 64, 1 << 10
	l, d := seqLogCache(t, frames, batch, size, seqCaches[1])
	defer l.Close()
	n := uint64(frames * batch)
	patterns := map[string]func(i int) uint64{
		"stride2":             func(i int) uint64 { return 1000 + 2*uint64(i) },
		"stride3":             func(i int) uint64 { return 3000 + 3*uint64(i) },
		"two descending":      func(i int) uint64 { return []uint64{9000, 9001}[i%2] - uint64(i/2) },
		"three descending +2": func(i int) uint64 { return []uint64{12000, 12002, 12004}[i%3] - uint64(i/3) },
		"four descending +1":  func(i int) uint64 { return []uint64{16000, 16001, 16002, 16003}[i%4] - uint64(i/4) },
	}
	for name, p := range patterns {
		t.Run(name, func(t *testing.T) {
			if name == "four descending +1" {
				t.Skip("known defect: the table of recent reads cannot tell readers apart; four readers reading down from offsets next to each other start a false run at most reads (4.6-9.9 MiB read ahead of 7-13 MiB read)")
			}
			aheadBefore, before := l.ra.bytes.Load(), d.bytes.Load()
			for i := range 600 {
				off := p(i) % n
				got, err := l.Read(off, nil)
				require.NoError(t, err)
				require.Equal(t, freshRecord(off, size, 0), got, "offset %d", off)
			}
			l.ra.wg.Wait()
			ahead, all := l.ra.bytes.Load()-aheadBefore, d.bytes.Load()-before
			t.Logf("%s: %d KiB read ahead of %d KiB read", name, ahead>>10, all>>10)
			assert.LessOrEqual(t, ahead, all/10, "read ahead for reads in no order")
		})
	}
}

// TestFollowersAmongManyRandomReaders: in-order readers among interleaved
// followers and random readers are read ahead.
func TestFollowersAmongManyRandomReaders(t *testing.T) {
	const frames, batch, size = 400, 64, 1 << 10
	l, _ := seqLogCache(t, frames, batch, size, seqCaches[1])
	defer l.Close()
	n := uint64(frames * batch)
	for k, c := range []struct{ followers, random int }{{2, 0}, {1, 24}, {1, 32}, {2, 16}} {
		t.Run(fmt.Sprintf("f%d-r%d", c.followers, c.random), func(t *testing.T) {
			if c.random >= 24 {
				t.Skip("known defect: a run starts only if its two reads before were among the last 48, so an in-order reader among 24 random readers gets 38% of its reads read ahead, among 32 none")
			}
			rng := rand.New(rand.NewPCG(uint64(k), 1))
			const run = 1000
			hits := int64(0)
			for i := range uint64(run) {
				for f := range uint64(c.followers) {
					off := uint64(k)*5000 + f*2500 + i
					before := l.ra.hits.Load()
					got, err := l.Read(off, nil)
					require.NoError(t, err)
					require.Equal(t, freshRecord(off, size, 0), got)
					hits += l.ra.hits.Load() - before
				}
				for range c.random {
					off := 20000 + rng.Uint64N(n-20000)
					_, err := l.Read(off, nil)
					require.NoError(t, err)
				}
			}
			t.Logf("%+v: %d of %d read-ahead hits", c, hits, run*c.followers)
			assert.Greater(t, hits, int64(run*c.followers)*8/10)
		})
	}
}
