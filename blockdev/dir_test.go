package blockdev_test

import (
	"io/fs"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/blockdev/devicetest"
)

func TestDirs(t *testing.T) {
	dirs := map[string]func(t *testing.T) blockdev.Dir{
		"os": func(t *testing.T) blockdev.Dir {
			d, err := blockdev.OpenDir(t.TempDir(), false)
			require.NoError(t, err)
			return d
		},
		"sim": func(t *testing.T) blockdev.Dir { return blockdev.NewSimDir(blockdev.SimOptions{}) },
	}
	for name, mk := range dirs {
		t.Run(name, func(t *testing.T) {
			t.Run("DeviceConformance", func(t *testing.T) {
				devicetest.Run(t, func(t *testing.T) blockdev.Device {
					d, err := mk(t).Open("f", blockdev.Options{Create: true})
					require.NoError(t, err)
					return d
				})
			})
			d := mk(t)
			_, err := d.Open("missing", blockdev.Options{})
			assert.ErrorIs(t, err, fs.ErrNotExist)
			for _, bad := range []string{"", ".", "..", "a/b", "../x"} {
				_, err := d.Open(bad, blockdev.Options{Create: true})
				assert.ErrorContains(t, err, "invalid file name", "name %q", bad)
			}

			a, err := d.Open("a", blockdev.Options{Create: true})
			require.NoError(t, err)
			buf := a.Alignment().Alloc(a.Alignment().Block)
			buf[0] = 'x'
			_, err = a.WriteAt(buf, 0)
			require.NoError(t, err)
			_, err = d.Open("b", blockdev.Options{Create: true})
			require.NoError(t, err)
			names, err := d.List()
			require.NoError(t, err)
			assert.Equal(t, []string{"a", "b"}, names)

			require.NoError(t, d.Rename("b", "c"))
			require.NoError(t, d.Remove("a"))
			names, err = d.List()
			require.NoError(t, err)
			assert.Equal(t, []string{"c"}, names)
			_, err = a.ReadAt(buf, 0)
			assert.NoError(t, err, "an open device survives the removal of its name")
			assert.Equal(t, byte('x'), buf[0])
			require.NoError(t, d.Sync())
			assert.Error(t, d.Remove("a"))
		})
	}
}

func TestOSDirLockIsExclusive(t *testing.T) {
	d, err := blockdev.OpenDir(t.TempDir(), false)
	require.NoError(t, err)
	release, err := d.Lock("LOCK")
	require.NoError(t, err)
	_, err = d.Lock("LOCK")
	assert.ErrorIs(t, err, blockdev.ErrLocked)
	assert.ErrorContains(t, err, "another process")
	require.NoError(t, release())
	release, err = d.Lock("LOCK")
	require.NoError(t, err, "released locks can be taken again")
	require.NoError(t, release())
}

// TestSimDirCrashKeepsOnlySyncedNames: creates, removes and renames are
// durable only after Sync, as with a real directory fsync.
func TestSimDirCrashKeepsOnlySyncedNames(t *testing.T) {
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	write := func(name string, b byte, sync bool) {
		dev, err := d.Open(name, blockdev.Options{Create: true})
		require.NoError(t, err)
		buf := dev.Alignment().Alloc(512)
		buf[0] = b
		_, err = dev.WriteAt(buf, 0)
		require.NoError(t, err)
		if sync {
			require.NoError(t, dev.Sync())
		}
	}
	write("kept", 'k', true)
	write("renamed", 'r', true)
	write("removed", 'x', true)
	require.NoError(t, d.Sync())
	write("new-unsynced-name", 'n', true) // content synced, name not
	require.NoError(t, d.Remove("removed"))
	require.NoError(t, d.Rename("renamed", "renamed2"))

	after := d.Crash(blockdev.CrashDropUnsynced)
	names, err := after.List()
	require.NoError(t, err)
	assert.Equal(t, []string{"kept", "removed", "renamed"}, names, "only synced names survive")
	for name, want := range map[string]byte{"kept": 'k', "removed": 'x', "renamed": 'r'} {
		assert.Equal(t, want, after.File(name).Bytes()[0], name)
	}
	_, err = d.Open("kept", blockdev.Options{})
	require.NoError(t, err)
	dev, _ := d.Open("kept", blockdev.Options{})
	assert.ErrorIs(t, dev.Sync(), blockdev.ErrCrashed, "the crashed directory's devices are gone")
}
