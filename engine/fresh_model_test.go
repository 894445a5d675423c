package engine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/cache"
)

// TestFreshNeverShowsAnotherSegmentsRecord: the write-through cache as the
// log drives it across rolls (the next segment's namespace, offsets going
// on), makeRoomFor (the same), TruncateBack (release, then the same offsets
// again in a new namespace) and concurrent appenders (a batch added after
// the one that follows it), with batches from one record to more than the
// bound. Every record is tagged with its namespace and offset: after every
// add and release, a read of any offset ever added, in any namespace ever
// used, returns either nothing or exactly that namespace's record there;
// every record of a batch still held is found (the lock-free lo and hi
// bounds never hide one); has agrees with get; the bytes held stay within
// the bound.
func TestFreshNeverShowsAnotherSegmentsRecord(t *testing.T) {
	for _, bound := range []int{2 << 10, 16 << 10, 64 << 10} {
		t.Run(fmt.Sprint(bound), func(t *testing.T) {
			c, err := cache.New(64 << 20)
			require.NoError(t, err)
			defer c.Close()
			f := &fresh{maxBytes: bound}
			rng := rand.New(rand.NewPCG(uint64(bound), 3))
			rec := func(ns cache.Namespace, off uint64) []byte {
				return append(fmt.Appendf(nil, "%d/%d/", ns, off), bytes.Repeat([]byte{byte(ns)}, int((off*31+uint64(ns))%300))...)
			}
			batch := func(ns cache.Namespace, first uint64, n int) [][]byte {
				recs := make([][]byte, n)
				for k := range recs {
					recs[k] = rec(ns, first+uint64(k))
				}
				return recs
			}
			ns, next := cache.Namespace(1), uint64(0)
			used := []cache.Namespace{ns}
			check := func() {
				t.Helper()
				size := 0
				for _, b := range f.batches {
					size += b.size
					for k := range b.count {
						off := b.first + uint64(k)
						got, ok := f.get(b.ns, off, nil)
						require.True(t, ok, "offset %d of namespace %d is held but not found (lo %d, hi %d)", off, b.ns, f.lo.Load(), f.hi.Load())
						require.Equal(t, rec(b.ns, off), got)
					}
				}
				require.Equal(t, size, f.bytes)
				require.LessOrEqual(t, f.bytes, f.maxBytes)
				for range 40 {
					n := used[rng.IntN(len(used))]
					off := rng.Uint64N(next + 2)
					got, ok := f.get(n, off, nil)
					require.Equal(t, ok, f.has(n, off), "has and get disagree at %d/%d", n, off)
					if ok {
						require.Equal(t, rec(n, off), got, "namespace %d offset %d", n, off)
					}
				}
			}
			for range 1000 {
				switch r := rng.IntN(100); {
				case r < 4: // a roll or makeRoomFor: a new segment, offsets go on
					ns++
					used = append(used, ns)
				case r < 7 && next > 0: // TruncateBack: release, new namespace, offsets again
					next -= rng.Uint64N(min(next, 50) + 1)
					f.release()
					ns++
					used = append(used, ns)
				case r < 20: // two appenders: the later batch added first
					n, m := 1+rng.IntN(5), 1+rng.IntN(5)
					f.add(c, ns, next+uint64(n), batch(ns, next+uint64(n), m))
					check()
					f.add(c, ns, next, batch(ns, next, n))
					next += uint64(n + m)
				default:
					n := 1 + rng.IntN(3)
					if rng.IntN(8) == 0 {
						n = 1 + rng.IntN(bound/40) // up to and past the bound
					}
					f.add(c, ns, next, batch(ns, next, n))
					next += uint64(n)
				}
				check()
			}
			f.release()
			require.Empty(t, f.batches)
		})
	}
}
