package cache

import (
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLongerSetsGetsAndCloseKeepReferences: goroutines set ever longer
// values for a few keys (each Set deleting the shorter one held) while
// others Get them, and the cache is closed meanwhile: once all is done,
// every value holds only its setter's reference (none leaked by the
// cache, none released twice) and every byte a Get returned was the
// key's.
func TestLongerSetsGetsAndCloseKeepReferences(t *testing.T) {
	for round := range 8 {
		c, err := New(1 << 20)
		require.NoError(t, err)
		ns := c.NewNamespace()
		const keys, sets = 4, 300
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			kept []*Value
		)
		for g := range 4 {
			wg.Add(2)
			go func() { // setter
				defer wg.Done()
				for i := range sets {
					k := (i + g) % keys
					v := c.Alloc(1 + i*37 + g)
					b := v.Bytes()
					for j := range b {
						b[j] = byte(k)
					}
					c.Set(ns, int64(k)*8, v)
					mu.Lock()
					kept = append(kept, v)
					mu.Unlock()
				}
			}()
			go func() { // getter
				defer wg.Done()
				for i := range 4 * sets {
					k := (i + g) % keys
					if v, ok := c.Get(ns, int64(k)*8); ok {
						for _, x := range v.Bytes() {
							if x != byte(k) {
								t.Errorf("key %d read a byte %d", k, x)
								break
							}
						}
						v.Release()
					}
				}
			}()
		}
		if round%2 == 0 {
			c.Close() // while they run
		}
		wg.Wait()
		c.Close()
		for _, v := range kept {
			assert.Equal(t, int64(1), v.refs.Load(), "a value's references after Close (round %d)", round)
		}
		for _, v := range kept {
			v.Release()
		}
	}
}
