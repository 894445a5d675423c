package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/wal"
)

// TestDurablePokeFollowsEveryPublish: the wake-up byte is written off the
// publisher's path, coalesced, and never before the words it announces:
// publishes made while the poker is busy writing one byte get one more
// byte, written after the last of them; close stops the poker and writes
// a last byte itself.
func TestDurablePokeFollowsEveryPublish(t *testing.T) {
	for _, n := range []int{1, 2, 10} {
		t.Run("", func(t *testing.T) {
			path := t.TempDir()
			var d *durableFile
			started, gate := make(chan uint64, 16), make(chan struct{})
			pokes := 0
			d, err := createDurableHooked(path, func() {
				pokes++
				started <- d.word(durSeq).Load()
				if pokes == 1 {
					<-gate // busy writing the first byte while more publishes come
				}
			})
			require.NoError(t, err)
			d.publish(0, position{pos: wal.DataStart, off: 0})
			first := <-started
			assert.Equal(t, uint64(2), first, "the first byte comes after the first publish's words")
			for i := 1; i < n; i++ {
				d.publish(0, position{pos: wal.DataStart + int64(i), off: uint64(i)})
			}
			last := d.word(durSeq).Load()
			close(gate)
			if n > 1 {
				assert.Equal(t, last, <-started, "one more byte, after the last publish's words")
			}
			d.close(true) // waits for the poker
			want := 1
			if n > 1 {
				want = 2
			}
			assert.Equal(t, want, pokes, "publishes made while a byte was being written share one byte")
			b, err := os.ReadFile(filepath.Join(path, durableName))
			require.NoError(t, err)
			assert.Equal(t, byte(1), b[durablePoke])
		})
	}
}
