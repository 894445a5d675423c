package engine

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// TestPublishWakesAWatcherOfTheFile: a directory watch that names
// DURABLE among the files whose reads count (as KeepRefreshed's does)
// is ready after each publish, which stores the words through the mapping
// (no file event) and then reads a byte of the file; the writer's close
// wakes it too. The bound on each wait detects a wedge, not a speed.
func TestPublishWakesAWatcherOfTheFile(t *testing.T) {
	path := t.TempDir()
	d, err := createDurable(osDir(t, path))
	require.NoError(t, err)
	changes, stop, err := blockdev.WatchDir(path, durableName)
	if errors.Is(err, blockdev.ErrNoWatch) {
		t.Skip(err)
	}
	require.NoError(t, err)
	defer stop()
	for i := range 3 {
		d.publish(0, position{pos: wal.DataStart + int64(i), off: uint64(i)})
		testutil.Receive(t, changes, "the watch was not ready after publish %d", i)
	}
	d.close(true)
	testutil.Receive(t, changes, "the watch was not ready after the writer's close")
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

// osDir is the real directory at path, for the DURABLE file's tests.
func osDir(t *testing.T, path string) *blockdev.OSDir {
	t.Helper()
	d, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	return d
}
