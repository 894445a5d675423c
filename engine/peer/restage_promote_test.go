package peer

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/engine"
)

// TestPromoteAfterRestage: a follower killed after the header block was
// restaged and before the import holds the sealed file whole (the
// sealed header block, its moved mark, the footer). Promote takes every
// record, the log takes appends and reopens with them.
func TestPromoteAfterRestage(t *testing.T) {
	open := func(dir string) *engine.Log {
		l, err := openBigSegments(dir, nil)
		require.NoError(t, err)
		return l
	}
	leader := open(t.TempDir())
	defer leader.Close()
	appendBytes(t, leader, 3<<20)
	require.NoError(t, leader.Roll())
	seg := leader.Segments()[0]
	file := leaderFile(t, leader, seg.File)
	dir := t.TempDir()
	follower := open(dir)
	st, err := openStage(follower.Files())
	require.NoError(t, err)
	require.NoError(t, st.start(seg.Base))
	require.NoError(t, st.append(bytes.NewReader(file), int64(len(file))))
	require.NoError(t, st.overwrite(bytes.NewReader(file), 4096))
	require.NoError(t, st.f.Close()) // killed here
	added, err := Promote(follower)
	require.NoError(t, err)
	assert.Equal(t, seg.Next-seg.Base, added)
	_, err = follower.Append([]byte("after"))
	require.NoError(t, err)
	require.NoError(t, follower.Close())
	follower = open(dir)
	defer follower.Close()
	assert.Equal(t, seg.Next+1, follower.EndOffset())
	for _, off := range []uint64{seg.Base, seg.Next - 1} {
		want, err := leader.Read(off, nil)
		require.NoError(t, err)
		got, err := follower.Read(off, nil)
		require.NoError(t, err)
		assert.Equal(t, want, got)
	}
}
