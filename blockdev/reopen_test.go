package blockdev_test

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// TestReopen: a reopened file has the held file's bytes and a position of
// its own; once the name is removed or names another file, Reopen either
// still opens the held file (it can) or fails with ErrReplaced, never
// opening the other file.
func TestReopen(t *testing.T) {
	for _, change := range []string{"none", "removed", "replaced"} {
		t.Run(change, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "f")
			require.NoError(t, os.WriteFile(path, []byte("held bytes"), 0o644))
			f, err := os.Open(path)
			require.NoError(t, err)
			defer f.Close()
			_, err = f.Seek(5, io.SeekStart)
			require.NoError(t, err)
			switch change {
			case "removed":
				require.NoError(t, os.Remove(path))
			case "replaced":
				require.NoError(t, os.WriteFile(path+".new", []byte("other file"), 0o644))
				require.NoError(t, os.Rename(path+".new", path))
			}
			nf, err := blockdev.Reopen(f)
			if change != "none" && errors.Is(err, blockdev.ErrReplaced) {
				return // a platform that reopens by name says so
			}
			require.NoError(t, err)
			defer nf.Close()
			b, err := io.ReadAll(nf)
			require.NoError(t, err)
			assert.Equal(t, "held bytes", string(b), "the held file, from its start")
			pos, err := f.Seek(0, io.SeekCurrent)
			require.NoError(t, err)
			assert.Equal(t, int64(5), pos, "the held file's position is its own")
		})
	}
}
