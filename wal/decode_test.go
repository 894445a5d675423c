package wal

import (
	"sync"
	"testing"

	"github.com/segstore/segstore/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDecodeFrames(t *testing.T) {
	tf := buildFile(t, 30, 0)
	hdr, err := DecodeFileHeader(tf.image)
	require.NoError(t, err)
	data := tf.image[DataStart:]
	walk := func(b []byte, stopAfter int) (frames []Frame, end int64, next uint64, err error) {
		end, next, err = DecodeFrames(b, hdr, DataStart, 0, func(f Frame) bool {
			frames = append(frames, f)
			return len(frames) != stopAfter
		})
		return
	}

	frames, end, next, err := walk(data, -1)
	require.NoError(t, err)
	require.Len(t, frames, 30)
	assert.Equal(t, tf.frames[29].End(), end)
	assert.Equal(t, tf.next, next)
	for i, f := range frames {
		assert.Equal(t, tf.frames[i].Pos, f.Pos)
		Records(Version, f.Payload, func(j int, r []byte) bool {
			require.Equal(t, testutil.Record(f.First+uint64(j), recordSize(f.First+uint64(j))), r)
			return true
		})
	}

	// A buffer that ends inside frame 10 stops there, without error.
	cut := tf.frames[10].Pos + 20 - DataStart
	frames, end, next, err = walk(data[:cut], -1)
	require.NoError(t, err)
	assert.Len(t, frames, 10)
	assert.Equal(t, tf.frames[10].Pos, end)
	assert.Equal(t, tf.firsts[10], next)

	// The callback can stop the walk.
	frames, end, _, err = walk(data, 3)
	require.NoError(t, err)
	assert.Len(t, frames, 3)
	assert.Equal(t, tf.frames[3].Pos, end)

	// A damaged frame is an error naming its position.
	bad := append([]byte(nil), data...)
	bad[tf.frames[5].Pos-DataStart+FrameHeaderLen] ^= 1
	frames, end, _, err = walk(bad, -1)
	assert.Len(t, frames, 5)
	assert.Equal(t, tf.frames[5].Pos, end)
	assert.ErrorContains(t, err, "checksum")
}

func TestHooksReportFramesInOrderAndDurability(t *testing.T) {
	var mu sync.Mutex
	var reserved []int64
	var durable []uint64
	dev := newSim(13)
	w, err := Create(dev, 0, Options{
		OnReserve: func(first uint64, pos int64, ts int64, _ [][]byte) {
			mu.Lock()
			reserved = append(reserved, pos)
			mu.Unlock()
		},
		OnDurable: func(pos int64, off uint64) { mu.Lock(); durable = append(durable, off); mu.Unlock() },
	})
	require.NoError(t, err)
	var wg sync.WaitGroup
	for a := 0; a < 8; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				_, err := w.Append([]byte("rec"), []byte("ord"))
				assert.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	require.NoError(t, w.Close())

	var frames []int64
	s, err := NewScanner(dev)
	require.NoError(t, err)
	for s.Next() {
		frames = append(frames, s.Frame().Pos)
	}
	assert.Equal(t, frames, reserved, "OnReserve sees every frame, in file order")
	require.NotEmpty(t, durable)
	assert.IsNonDecreasing(t, durable)
	assert.Equal(t, uint64(320), durable[len(durable)-1])
}
