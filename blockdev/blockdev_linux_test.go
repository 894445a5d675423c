package blockdev_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

func TestTmpfsIsRefusedUnlessBuffered(t *testing.T) {
	const shm = "/dev/shm"
	var st syscall.Statfs_t
	if err := syscall.Statfs(shm, &st); err != nil || st.Type != 0x01021994 {
		t.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp(shm, "segstore-test")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "dev")

	_, err = blockdev.Open(path, blockdev.Options{Create: true})
	var ue *blockdev.UnsupportedError
	require.ErrorAs(t, err, &ue)
	assert.ErrorIs(t, err, blockdev.ErrDirectIOUnsupported)
	assert.Equal(t, "tmpfs", ue.FS)
	assert.Contains(t, err.Error(), "Options.Buffered", "the error must name the option that allows the fallback")
	_, statErr := os.Stat(path)
	assert.True(t, os.IsNotExist(statErr), "a refused open must not create the file")

	d, err := blockdev.Open(path, blockdev.Options{Create: true, Buffered: true})
	require.NoError(t, err)
	defer d.Close()
	assert.False(t, d.Direct())
	assert.Equal(t, "buffered", d.Alignment().Source)
}
