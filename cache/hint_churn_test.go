package cache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// stream is the content of every value of (ns, pos): each is a prefix of
// it, so a longer value holds a shorter one, and a value of another key
// (or a reused block) is told apart by its bytes.
func stream(b []byte, ns Namespace, pos int64) {
	for i := range b {
		b[i] = byte(uint64(pos)>>3*131 ^ uint64(ns)*71 ^ uint64(i)*7 ^ uint64(i)>>8)
	}
}

// TestHintsUnderChurnOfOneSet: goroutines Set values of several lengths
// (a longer one replaces a shorter: ristretto's Del and a new Set) and Get
// them, on keys that fall in one set of the hint table, on pairs of keys
// that share one ristretto slot (positions beyond 32 GiB), and on keys
// elsewhere, in a budget that holds a few of them, so that hints are put,
// displaced by keys of their set, dropped on eviction, on replacement and
// on refusal, and met by blocks reused for other values; the cache is
// closed while they run. Every Get returns a prefix of its key's bytes,
// every hint left names a value the cache holds, and the budget holds.
func TestHintsUnderChurnOfOneSet(t *testing.T) {
	lengths := []int{100, 700, 3000, 5000, 9000}
	for try := range 6 {
		t.Run(fmt.Sprint("try ", try), func(t *testing.T) {
			const budget = 64 << 10
			c, err := New(budget)
			require.NoError(t, err)
			ns1, ns2 := c.NewNamespace(), c.NewNamespace()
			type key struct {
				ns  Namespace
				pos int64
			}
			var keys []key
			set0 := c.hint(slot(ns1, 0))
			for pos := int64(0); len(keys) < 12; pos += 8 {
				if c.hint(slot(ns1, pos)) == set0 {
					keys = append(keys, key{ns1, pos})
				}
			}
			for x := int64(0); x < 6; x++ {
				// slot(ns1, 8x) == slot(ns2, 3<<35 + 8x) for these namespaces.
				a, b := key{ns1, 8*x + 8000}, key{ns2, 3<<35 + 8*x + 8000}
				require.Equal(t, slot(a.ns, a.pos), slot(b.ns, b.pos))
				keys = append(keys, a, b)
			}
			for pos := int64(1 << 20); len(keys) < 40; pos += 8 {
				keys = append(keys, key{ns2, pos})
			}

			var wrong, hits, sets atomic.Int64
			run := func(stop chan struct{}, wg *sync.WaitGroup, seed uint64) {
				for g := range 8 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						rng := rand.New(rand.NewPCG(seed, uint64(g)))
						want := make([]byte, 9000)
						var held []*Value
						var heldKeys []key
						check := func(v *Value, k key) {
							b := v.Bytes()
							if len(b) > len(want) {
								wrong.Add(1)
								return
							}
							stream(want[:len(b)], k.ns, k.pos)
							if !bytes.Equal(b, want[:len(b)]) {
								wrong.Add(1)
							}
						}
						release := func() {
							for j, v := range held {
								check(v, heldKeys[j]) // still ours, whatever happened since
								v.Release()
							}
							held, heldKeys = held[:0], heldKeys[:0]
						}
						defer release()
						for i := 0; ; i++ {
							select {
							case <-stop:
								return
							default:
							}
							k := keys[rng.IntN(len(keys))]
							if v, ok := c.Get(k.ns, k.pos); ok {
								hits.Add(1)
								check(v, k)
								if rng.IntN(4) == 0 {
									held, heldKeys = append(held, v), append(heldKeys, k)
								} else {
									v.Release()
								}
							}
							if rng.IntN(2) == 0 {
								v := c.Alloc(lengths[rng.IntN(len(lengths))])
								stream(v.Bytes(), k.ns, k.pos)
								c.Set(k.ns, k.pos, v)
								v.Release()
								sets.Add(1)
							}
							if len(held) > 6 {
								release()
							}
							if i%200 == 199 {
								c.Wait()
							}
						}
					}()
				}
			}

			// Churn, then look at the hints left once the cache settles.
			stop := make(chan struct{})
			var wg sync.WaitGroup
			run(stop, &wg, uint64(try))
			for sets.Load() < 20000 {
				c.Wait()
			}
			close(stop)
			wg.Wait()
			c.Wait()
			for i := range c.hints {
				for j := range c.hints[i] {
					if e := c.hints[i][j].e.Load(); e != nil {
						assert.Equal(t, e.id, e.v.cachedID.Load(), "a hint names a value the cache let go of")
					}
				}
			}
			st := c.Stats()
			assert.LessOrEqual(t, st.Bytes, int64(budget), "%+v", st)
			assert.Positive(t, st.Evicted+st.Refused, "%+v", st)

			// Churn again, and close the cache while it runs.
			stop = make(chan struct{})
			run(stop, &wg, uint64(try)+100)
			for n := sets.Load(); sets.Load() < n+5000; {
				c.Wait()
			}
			c.Close()
			close(stop)
			wg.Wait()
			assert.Zero(t, wrong.Load(), "a Get returned bytes that are not a prefix of its key's")
			assert.Positive(t, hits.Load())
			_, ok := c.Get(keys[0].ns, keys[0].pos)
			assert.False(t, ok)
			for i := range c.hints {
				for j := range c.hints[i] {
					assert.Nil(t, c.hints[i][j].e.Load(), "a closed cache hints nothing")
				}
			}
		})
	}
}

// TestLongerValueMeetingAnotherSetStaysWithinBudget: a Set of a longer
// value for a key whose shorter value it did not see (another Set's was
// admitted between its look and its offer, so it deleted nothing) reaches
// ristretto as an update of the key. An update changes the cost counted
// without evicting anything: taken, it put the cache past its budget by
// the growth. It is refused instead, and the value held keeps its cost.
func TestLongerValueMeetingAnotherSetStaysWithinBudget(t *testing.T) {
	const budget = 256 << 10
	for _, grow := range []int{600, 5000, 40 << 10, 120 << 10} {
		t.Run(fmt.Sprint("to ", grow), func(t *testing.T) {
			c, err := New(budget)
			require.NoError(t, err)
			defer c.Close()
			ns := c.NewNamespace()
			fill := make([]byte, 500)
			for pos := int64(0); c.Room() > 2048; pos += 8 {
				set(c, ns, pos, fill)
				c.Wait()
			}
			before := c.Stats()
			require.LessOrEqual(t, before.Bytes, int64(budget))

			// Set's offer, past its look at what is held (it saw nothing
			// shorter to delete): the tail of Set.
			v := c.Alloc(grow)
			require.True(t, v.cachedID.CompareAndSwap(0, v.id))
			v.refs.Add(1)
			e := &entry{v: v, id: v.id, pos: 0, ns: ns}
			c.pending.Add(v.cost() + entryCost)
			c.hint(slot(ns, 0)).put(slot(ns, 0), e)
			if !c.rc.Set(slot(ns, 0), e, 0) {
				e.drop()
			}
			v.Release()
			c.Wait()
			st := c.Stats()
			assert.LessOrEqual(t, st.Bytes, int64(budget), "before %+v, after %+v", before, st)
			got, ok := get(c, ns, 0)
			if ok && len(got) == grow {
				// Taken as an update, it must have made room.
				assert.Positive(t, st.Evicted-before.Evicted, "%+v", st)
			}
		})
	}
}
