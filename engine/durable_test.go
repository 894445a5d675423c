package engine

import (
	"encoding/binary"
	"math/bits"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
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

// TestDurableOfTheOtherByteOrderIsNotTrusted: a DURABLE file whose words
// a live writer of the other byte order stored (it has acknowledged
// nothing) tells a reader nothing: the reader shows none of the active
// segment, where taking the words in its own order (open's 1 read as
// 1<<56, not open) showed every unacknowledged record on disk. A writer
// of this order then starts the words afresh and readers follow it.
func TestDurableOfTheOtherByteOrderIsNotTrusted(t *testing.T) {
	path := t.TempDir()
	writer := realLog(t, path)
	_, err := writer.Append([]byte("a"), []byte("b"), []byte("c"))
	require.NoError(t, err)
	require.NoError(t, writer.Close())

	foreign := make([]byte, durableSize)
	copy(foreign, durableMagic)
	for off, v := range map[int]uint64{durSeq: 2, durBase: 0, durPos: wal.DataStart, durOffset: 0, durOpen: 1, durOrder: durableOrder} {
		binary.NativeEndian.PutUint64(foreign[off:], bits.ReverseBytes64(v))
	}
	require.NoError(t, os.WriteFile(filepath.Join(path, durableName), foreign, 0o644))
	dir, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	unlock, err := dir.Lock(lockName) // that writer, live
	require.NoError(t, err)
	reader := readerOf(t, path)
	assert.Equal(t, uint64(0), reader.EndOffset(), "words of the other byte order: nothing of the active segment")
	assert.Equal(t, WriterInfo{Live: true}, reader.Writer(), "nothing published that this reader can read")
	rep, err := Verify(path, VerifyOptions{})
	require.NoError(t, err)
	assert.True(t, rep.LiveWriter)
	assert.Empty(t, rep.Problems)
	require.NoError(t, unlock())

	writer = realLog(t, path)
	defer writer.Close()
	b, err := os.ReadFile(filepath.Join(path, durableName))
	require.NoError(t, err)
	assert.Equal(t, uint64(durableOrder), binary.NativeEndian.Uint64(b[durOrder:]), "the writer stores the words in its order")
	_, err = reader.Refresh()
	require.NoError(t, err)
	assert.Equal(t, uint64(3), reader.EndOffset())
	assert.Equal(t, WriterInfo{Live: true, Acknowledged: 3, Published: true}, reader.Writer())
}
