package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// A writer opened with a real directory as Options.Dir holds the
// directory's lock like one opened by name: a second writer, by name or
// through the same Options.Dir, is refused with ErrLocked, and a reader
// finds the lock held (so it shows only what the writer made durable).
func TestOptionsDirWriterHoldsTheLock(t *testing.T) {
	path := t.TempDir()
	d, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	o := DefaultOptions()
	o.SegmentSize, o.Logger, o.Dir, o.SyncMode = 256<<10, quiet, d, SyncNever
	l1, err := Open(path, o)
	require.NoError(t, err)
	defer l1.Close()
	for i := range 200 {
		_, err = l1.Append(modelRec(i))
		require.NoError(t, err)
	}

	held, _, err := d.LockHolder(lockName)
	require.NoError(t, err)
	assert.True(t, held, "the writer holds LOCK")

	byName := o
	byName.Dir = nil
	for name, o2 := range map[string]Options{"by name": byName, "same Options.Dir": o} {
		l2, err := Open(path, o2)
		if err == nil {
			l2.Close()
		}
		assert.ErrorIs(t, err, blockdev.ErrLocked, "a second writer (%s) is refused", name)
	}

	ro := DefaultOptions()
	ro.ReadOnly, ro.Logger = true, quiet
	r, err := Open(path, ro)
	require.NoError(t, err)
	defer r.Close()
	assert.LessOrEqual(t, r.DurableOffset(), l1.DurableOffset(), "a reader beside the writer shows no more than it made durable")

	require.NoError(t, l1.Close())
	l3, err := Open(path, o)
	require.NoError(t, err, "the lock goes with the writer that closed")
	require.NoError(t, l3.Close())
}
