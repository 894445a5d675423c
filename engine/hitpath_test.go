package engine

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// TestEveryRecordReadOnceIsCached: once every record of a sealed log has
// been read (into a cache that holds them all), reading every record again
// costs no device byte, whatever the record size: a point read caches the
// run of records its read brought, which can stop short of its index
// interval's end (a record that crosses the end of the read), and the
// read of a record past that run, which reads a longer run of the same
// entry, must replace the shorter one, or every read of that record goes
// to the device. The reads go in stride order (even offsets, then odd
// ones) so that a short run is cached before the record after it is read,
// and no run of sequential reads forms; the cache's Sets are waited for
// after each read, so the order is the one written.
func TestEveryRecordReadOnceIsCached(t *testing.T) {
	sizes := []int{1, 100, 1 << 10, 1500, 3000, 4<<10 - 1, 4<<10 + 1, 9000}
	for _, size := range sizes {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			d := &countingDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{})}
			o := testOptions(d)
			o.SegmentSize, o.MaxWrite, o.CacheBytes = 1<<20, 256<<10, 16<<20
			l, err := Open("sim", o)
			require.NoError(t, err)
			const records = 200
			for l.EndOffset() < records {
				recs := make([][]byte, min(16, 128<<10/(size+64)))
				for k := range recs {
					recs[k] = freshRecord(l.EndOffset()+uint64(k), size+k%3, 0)
				}
				_, err := l.Append(recs...)
				require.NoError(t, err)
			}
			require.NoError(t, l.Close())
			l, err = Open("sim", o) // nothing fresh: every read goes through the cache
			require.NoError(t, err)
			defer l.Close()
			n := l.EndOffset()
			var order []uint64
			for _, parity := range []uint64{0, 1} {
				for off := parity; off < n; off += 2 {
					order = append(order, off)
				}
			}
			pass := func(wait bool) int64 {
				before := d.bytes.Load()
				for _, off := range order {
					rec, err := l.Read(off, nil)
					require.NoError(t, err, "offset %d", off)
					require.Equal(t, freshRecord(off, len(rec), 0), rec, "offset %d", off)
					if wait {
						l.cache.Wait()
					}
				}
				return d.bytes.Load() - before
			}
			first := pass(true)
			require.Positive(t, first)
			again := pass(false)
			require.Zero(t, again, "reading %d records of %d bytes a second time read %d device bytes (the first time %d); cache %+v", n, size, again, first, l.cache.Stats())
		})
	}
}

// TestEntryForMatchesBinarySearch: entryFor (an interpolation guess, then
// a gallop and a binary search) returns what a binary search of the index
// returns, for every offset around every entry of indexes of 1 to 300
// entries shaped evenly, unevenly (random gaps of 1 to 1000), skewed (one
// huge gap at the start, the middle or the end, the gaps growing
// geometrically) and with repeated offsets.
func TestEntryForMatchesBinarySearch(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	shapes := map[string]func(i, n int) uint64{
		"even":     func(i, n int) uint64 { return 4 },
		"random":   func(i, n int) uint64 { return 1 + r.Uint64N(1000) },
		"gapfirst": func(i, n int) uint64 { return map[bool]uint64{true: 1 << 40, false: 1}[i == 1] },
		"gapmid":   func(i, n int) uint64 { return map[bool]uint64{true: 1 << 40, false: 1}[i == n/2] },
		"gaplast":  func(i, n int) uint64 { return map[bool]uint64{true: 1 << 40, false: 1}[i == n-1] },
		"growing":  func(i, n int) uint64 { return 1 << min(i, 50) },
		"repeats":  func(i, n int) uint64 { return uint64(i % 2) },
	}
	for name, gap := range shapes {
		for _, n := range []int{1, 2, 3, 5, 17, 64, 300} {
			index := make([]indexEntry, n)
			off := uint64(1000)
			for i := range index {
				if i > 0 {
					off += gap(i, n)
				}
				index[i].off = off
			}
			probe := func(x uint64) {
				want := sort.Search(n, func(i int) bool { return index[i].off > x }) - 1
				require.Equal(t, want, entryFor(index, x), "%s, %d entries, offset %d", name, n, x)
			}
			probe(0)
			probe(math.MaxUint64)
			for _, e := range index {
				for _, d := range []int64{-2, -1, 0, 1, 2} {
					probe(uint64(int64(e.off) + d))
				}
			}
			for range 200 {
				probe(index[0].off + r.Uint64N(index[n-1].off-index[0].off+2))
			}
		}
	}
}
