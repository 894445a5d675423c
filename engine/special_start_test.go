//go:build unix

package engine

import (
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// TestRefreshRefusesASpecialStart: a START that is not a regular file (a
// FIFO put in its place) makes Refresh fail with ErrNotRegular instead of
// waiting for ever in the open of the FIFO for a writer that never comes.
func TestRefreshRefusesASpecialStart(t *testing.T) {
	path := t.TempDir()
	w := realLog(t, path)
	defer w.Close()
	_, err := w.Append([]byte("a"))
	require.NoError(t, err)
	o := realOptions()
	o.ReadOnly = true
	r, err := Open(path, o)
	require.NoError(t, err)
	defer r.Close()
	require.NoError(t, syscall.Mkfifo(filepath.Join(path, startName), 0o644))
	_, err = r.Refresh()
	require.ErrorIs(t, err, blockdev.ErrNotRegular)
}
