package blockdev_test

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
	var locked *blockdev.LockedError
	require.ErrorAs(t, err, &locked)
	assert.Equal(t, os.Getpid(), locked.PID, "the holder's process id, from the file")
	assert.True(t, strings.HasPrefix(locked.Command, os.Args[0]+" "), "the holder's command line, from /proc: %q", locked.Command)
	assert.LessOrEqual(t, len(locked.Command), 200+len("…"))
	assert.ErrorContains(t, err, fmt.Sprintf("held by this process (process %d)", os.Getpid()))
	require.NoError(t, release())
	release, err = d.Lock("LOCK")
	require.NoError(t, err, "released locks can be taken again")
	require.NoError(t, release())
}

// TestOpenDirCreatesOnlyItsOwnDirectory: OpenDir creates the directory
// named, never its missing parents, and refuses a path that is a file.
func TestOpenDirCreatesOnlyItsOwnDirectory(t *testing.T) {
	tmp := t.TempDir()
	_, err := blockdev.OpenDir(filepath.Join(tmp, "a", "b"), false)
	assert.ErrorContains(t, err, "its parent directory does not exist: create it first")
	assert.NoDirExists(t, filepath.Join(tmp, "a"), "no parent created")

	d, err := blockdev.OpenDir(filepath.Join(tmp, "a"), false)
	require.NoError(t, err)
	assert.DirExists(t, d.Path())
	_, err = blockdev.OpenDir(d.Path(), false)
	require.NoError(t, err, "an existing directory")

	file := filepath.Join(tmp, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	_, err = blockdev.OpenDir(file, false)
	assert.ErrorContains(t, err, "is a regular file, not a directory")
}

// TestOpenExistingDirCreatesNothing: a reader's open of a missing path is
// an error wrapping fs.ErrNotExist, and creates nothing.
func TestOpenExistingDirCreatesNothing(t *testing.T) {
	tmp := t.TempDir()
	missing := filepath.Join(tmp, "store")
	_, err := blockdev.OpenExistingDir(missing, false)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.ErrorContains(t, err, missing+" is not an existing directory")
	assert.NoDirExists(t, missing)

	file := filepath.Join(tmp, "file")
	require.NoError(t, os.WriteFile(file, nil, 0o644))
	_, err = blockdev.OpenExistingDir(file, false)
	assert.ErrorContains(t, err, "is a regular file, not a directory")

	d, err := blockdev.OpenExistingDir(tmp, true)
	require.NoError(t, err)
	assert.Equal(t, tmp, d.Path())
}

// TestOSDirLockHolder: LockHolder sees a lock (of any open, in this
// process too) and its holder's process id, creates nothing, and leaves
// the lock to its holder.
func TestOSDirLockHolder(t *testing.T) {
	d, err := blockdev.OpenDir(t.TempDir(), false)
	require.NoError(t, err)
	held, _, err := d.LockHolder("LOCK")
	require.NoError(t, err)
	assert.False(t, held, "no file")
	_, err = d.Size("LOCK")
	require.ErrorIs(t, err, fs.ErrNotExist, "the query creates nothing")

	release, err := d.Lock("LOCK")
	require.NoError(t, err)
	held, pid, err := d.LockHolder("LOCK")
	require.NoError(t, err)
	assert.True(t, held)
	assert.Equal(t, os.Getpid(), pid)
	held, _, err = d.LockHolder("LOCK") // its open closed again: the lock stays
	require.NoError(t, err)
	assert.True(t, held, "a query's close does not release the holder's lock")
	require.NoError(t, release())
	held, _, err = d.LockHolder("LOCK")
	require.NoError(t, err)
	assert.False(t, held, "released")
}

// TestLockQueriesNeverRefuseALock: lock queries hammering a lock file
// while it is taken and released, 300 times, never make a Lock fail (a
// probe that took the lock, even briefly and shared, did: 72 to 143 takes
// of 300 here). Each round also checks the queries' answers either side.
func TestLockQueriesNeverRefuseALock(t *testing.T) {
	d, err := blockdev.OpenDir(t.TempDir(), false)
	require.NoError(t, err)
	stop := make(chan struct{})
	var probes sync.WaitGroup
	var queryErrs atomic.Int64
	for range 2 {
		probes.Add(1)
		go func() {
			defer probes.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, _, err := d.LockHolder("LOCK"); err != nil {
					queryErrs.Add(1)
				}
			}
		}()
	}
	refused := 0
	for range 300 {
		release, err := d.Lock("LOCK")
		if errors.Is(err, blockdev.ErrLocked) {
			refused++
			continue
		}
		require.NoError(t, err)
		held, _, err := d.LockHolder("LOCK")
		require.NoError(t, err)
		require.True(t, held)
		require.NoError(t, release())
		held, _, err = d.LockHolder("LOCK")
		require.NoError(t, err)
		require.False(t, held)
	}
	close(stop)
	probes.Wait()
	assert.Zero(t, refused, "takes refused while only queries ran")
	assert.Zero(t, queryErrs.Load(), "queries that failed")
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

// TestSimDirStopAfter: every kind of change counts, the change past the
// limit and all later ones fail with an injected EIO (reads do not), and
// the crashed directory holds what the allowed changes made durable.
func TestSimDirStopAfter(t *testing.T) {
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	f, err := d.Open("a", blockdev.Options{Create: true}) // 1 change
	require.NoError(t, err)
	buf := f.Alignment().Alloc(4096)
	buf[0] = 'x'
	_, err = f.WriteAt(buf, 0) // 2
	require.NoError(t, err)
	require.NoError(t, f.Sync())        // 3
	require.NoError(t, d.Sync())        // 4
	require.NoError(t, f.Truncate(512)) // 5
	assert.Equal(t, 5, d.Changes())
	assert.Equal(t, []string{"write sim:a", "sync sim:a", "sync sim", "truncate sim:a"}, d.ChangesSince(1), "the changes, in order")
	assert.Empty(t, d.ChangesSince(5))

	d.StopAfter(1)
	require.NoError(t, d.Rename("a", "b")) // the one change left
	for name, op := range map[string]func() error{
		"write":    func() error { _, err := f.WriteAt(buf, 0); return err },
		"sync":     f.Sync,
		"allocate": func() error { return f.Allocate(0, 1<<20) },
		"truncate": func() error { return f.Truncate(0) },
		"create":   func() error { _, err := d.Open("c", blockdev.Options{Create: true}); return err },
		"remove":   func() error { return d.Remove("b") },
		"rename":   func() error { return d.Rename("b", "c") },
		"dir sync": d.Sync,
	} {
		err := op()
		assert.ErrorIs(t, err, syscall.EIO, name)
		assert.ErrorIs(t, err, blockdev.ErrInjected, name)
		assert.ErrorContains(t, err, "stopped after", name)
	}
	_, err = f.ReadAt(buf[:512], 0)
	assert.NoError(t, err, "reads change nothing and go on")
	assert.Equal(t, 6, d.Changes())

	c := d.Crash(blockdev.CrashKeepAll)
	names, err := c.List()
	require.NoError(t, err)
	assert.Equal(t, []string{"a"}, names, "the rename was never made durable")
	size, err := c.Size("a")
	require.NoError(t, err)
	assert.Equal(t, int64(512), size, "a process kill keeps every completed write")
	c.StopAfter(0)
	assert.Error(t, c.Sync(), "the crashed directory counts its own changes")
}
