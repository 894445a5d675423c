package blockdev_test

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// seamDir is a directory with every optional capability.
type seamDir interface {
	blockdev.Dir
	blockdev.Locker
	blockdev.Stater
	blockdev.PlainOpener
	blockdev.Mapper
	blockdev.Watcher
}

func seamDirs() map[string]func(t *testing.T) seamDir {
	return map[string]func(t *testing.T) seamDir{
		"os": func(t *testing.T) seamDir {
			d, err := blockdev.OpenDir(t.TempDir(), false)
			require.NoError(t, err)
			return d
		},
		"sim": func(t *testing.T) seamDir { return blockdev.NewSimDir(blockdev.SimOptions{}) },
	}
}

// TestSeamLock: a held lock refuses a second Lock, in this process too,
// with a *LockedError that names this process; LockHolder sees it without
// taking it; a released lock is taken again.
func TestSeamLock(t *testing.T) {
	for name, mk := range seamDirs() {
		t.Run(name, func(t *testing.T) {
			d := mk(t)
			held, _, err := d.LockHolder("LOCK")
			require.NoError(t, err)
			assert.False(t, held)
			release, err := d.Lock("LOCK")
			require.NoError(t, err)
			_, err = d.Lock("LOCK")
			var le *blockdev.LockedError
			require.ErrorAs(t, err, &le)
			require.ErrorIs(t, err, blockdev.ErrLocked)
			assert.Equal(t, os.Getpid(), le.PID)
			assert.Contains(t, err.Error(), "is held by this process")
			held, pid, err := d.LockHolder("LOCK")
			require.NoError(t, err)
			assert.True(t, held)
			assert.Equal(t, os.Getpid(), pid)
			require.NoError(t, release())
			held, _, err = d.LockHolder("LOCK")
			require.NoError(t, err)
			assert.False(t, held)
			again, err := d.Lock("LOCK")
			require.NoError(t, err)
			require.NoError(t, again())
		})
	}
}

// TestSimDirCrashReleasesTheLock: the directory a crash leaves has no
// lock held (the process that held it is gone).
func TestSimDirCrashReleasesTheLock(t *testing.T) {
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	_, err := d.Lock("LOCK")
	require.NoError(t, err)
	c := d.Crash(blockdev.CrashKeepAll)
	release, err := c.Lock("LOCK")
	require.NoError(t, err)
	require.NoError(t, release())
}

// TestSeamStat: a stat tells files apart whatever their names: a rename
// keeps the file, a rename over a name and a create after a remove make
// the name another file; an open device is the file it opened.
func TestSeamStat(t *testing.T) {
	for name, mk := range seamDirs() {
		t.Run(name, func(t *testing.T) {
			d := mk(t)
			_, err := d.Stat("a")
			require.ErrorIs(t, err, fs.ErrNotExist)
			dev, err := d.Open("a", blockdev.Options{Create: true})
			require.NoError(t, err)
			defer dev.Close()
			a, err := d.Stat("a")
			require.NoError(t, err)
			open, err := d.StatDevice(dev)
			require.NoError(t, err)
			assert.True(t, a.SameFile(open), "the name is the file opened")
			assert.False(t, a.SameFile(blockdev.FileStat{}), "no file")

			require.NoError(t, d.Rename("a", "b"))
			b, err := d.Stat("b")
			require.NoError(t, err)
			assert.True(t, b.SameFile(open), "renamed, the same file")

			other, err := d.Open("c", blockdev.Options{Create: true})
			require.NoError(t, err)
			defer other.Close()
			require.NoError(t, d.Rename("c", "b"))
			b, err = d.Stat("b")
			require.NoError(t, err)
			assert.False(t, b.SameFile(open), "renamed over: another file")

			require.NoError(t, d.Remove("b"))
			again, err := d.Open("b", blockdev.Options{Create: true})
			require.NoError(t, err)
			defer again.Close()
			b, err = d.Stat("b")
			require.NoError(t, err)
			assert.False(t, b.SameFile(open), "created anew: another file")
			now, err := d.StatDevice(again)
			require.NoError(t, err)
			assert.True(t, b.SameFile(now))
		})
	}
}

// TestSeamOpenPlain: a plain file takes writes of any length at any
// offset, which a device of the directory then reads; O_TRUNC empties
// it; without O_CREATE a missing name is refused.
func TestSeamOpenPlain(t *testing.T) {
	for name, mk := range seamDirs() {
		t.Run(name, func(t *testing.T) {
			d := mk(t)
			_, err := d.OpenPlain("p", os.O_RDONLY)
			require.ErrorIs(t, err, fs.ErrNotExist)
			f, err := d.OpenPlain("p", os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
			require.NoError(t, err)
			_, err = f.Write([]byte("hello, "))
			require.NoError(t, err)
			_, err = f.Write([]byte("world"))
			require.NoError(t, err)
			_, err = f.WriteAt([]byte("W"), 7)
			require.NoError(t, err)
			require.NoError(t, f.Sync())
			require.NoError(t, f.Close())

			r, err := d.OpenPlain("p", os.O_RDONLY)
			require.NoError(t, err)
			b, err := io.ReadAll(r)
			require.NoError(t, err)
			assert.Equal(t, "hello, World", string(b))
			_, err = r.Write([]byte("x"))
			assert.Error(t, err, "opened read-only")
			require.NoError(t, r.Close())
			size, err := d.Size("p")
			require.NoError(t, err)
			assert.Equal(t, int64(12), size)
			dev, err := d.Open("p", blockdev.Options{ReadOnly: true, Buffered: true})
			require.NoError(t, err)
			buf := dev.Alignment().Alloc(dev.Alignment().Offset)
			n, err := dev.ReadAt(buf, 0)
			require.ErrorIs(t, err, io.EOF)
			assert.Equal(t, "hello, World", string(buf[:n]))
			require.NoError(t, dev.Close())

			f, err = d.OpenPlain("p", os.O_RDWR|os.O_TRUNC)
			require.NoError(t, err)
			require.NoError(t, f.Close())
			size, err = d.Size("p")
			require.NoError(t, err)
			assert.Zero(t, size, "O_TRUNC")
		})
	}
}

// TestSeamReopenPlain: a reopen of a device reads the file the device
// holds, with a position of its own, and writes nothing; once the name was
// renamed over, it still reads that file or fails with ErrReplaced (a
// platform that reopens by name), never reading the file now named so.
func TestSeamReopenPlain(t *testing.T) {
	for name, mk := range seamDirs() {
		t.Run(name, func(t *testing.T) {
			d := mk(t)
			writePlain(t, d, "seg", "the segment's bytes")
			dev, err := d.Open("seg", blockdev.Options{ReadOnly: true, Buffered: true})
			require.NoError(t, err)
			defer dev.Close()

			f, err := d.ReopenPlain(dev)
			require.NoError(t, err)
			at := make([]byte, 7)
			_, err = f.ReadAt(at, 4)
			require.NoError(t, err)
			assert.Equal(t, "segment", string(at))
			b, err := io.ReadAll(f)
			require.NoError(t, err)
			assert.Equal(t, "the segment's bytes", string(b), "ReadAt moved no position")
			_, err = f.WriteAt([]byte("x"), 0)
			assert.Error(t, err, "reopened read-only")
			require.NoError(t, f.Close())

			writePlain(t, d, "other", "another file")
			require.NoError(t, d.Rename("other", "seg"))
			f, err = d.ReopenPlain(dev)
			if !errors.Is(err, blockdev.ErrReplaced) {
				require.NoError(t, err)
				b, err = io.ReadAll(f)
				require.NoError(t, err)
				assert.Equal(t, "the segment's bytes", string(b), "the file the device holds, not the one now named seg")
				require.NoError(t, f.Close())
			}

			_, err = d.ReopenPlain(foreignDevice{dev})
			assert.ErrorContains(t, err, "not a device of")
		})
	}
}

// TestSeamPlainTruncate: Truncate cuts a plain file or extends it with
// zeros; it needs a file opened for writing, and an open one.
func TestSeamPlainTruncate(t *testing.T) {
	for name, mk := range seamDirs() {
		t.Run(name, func(t *testing.T) {
			d := mk(t)
			f, err := d.OpenPlain("p", os.O_RDWR|os.O_CREATE)
			require.NoError(t, err)
			_, err = f.Write([]byte("hello, world"))
			require.NoError(t, err)
			require.NoError(t, f.Truncate(5))
			size, err := d.Size("p")
			require.NoError(t, err)
			assert.Equal(t, int64(5), size)
			require.NoError(t, f.Truncate(8))
			b := make([]byte, 8)
			_, err = f.ReadAt(b, 0)
			require.NoError(t, err)
			assert.Equal(t, "hello\x00\x00\x00", string(b), "extended with zeros")
			require.NoError(t, f.Sync())
			require.NoError(t, f.Close())
			assert.ErrorIs(t, f.Truncate(0), os.ErrClosed)

			r, err := d.OpenPlain("p", os.O_RDONLY)
			require.NoError(t, err)
			assert.Error(t, r.Truncate(0), "opened read-only")
			require.NoError(t, r.Close())
			size, err = d.Size("p")
			require.NoError(t, err)
			assert.Equal(t, int64(8), size, "a refused Truncate changes nothing")
		})
	}
}

// foreignDevice is a device no directory opened.
type foreignDevice struct{ blockdev.Device }

func (foreignDevice) File() *os.File { return nil }

// writePlain makes name hold s, durably.
func writePlain(t *testing.T, d seamDir, name, s string) {
	t.Helper()
	f, err := d.OpenPlain(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	require.NoError(t, err)
	_, err = f.Write([]byte(s))
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
}

// TestSimPlainTruncateIsDurableAtSync: a simulated plain file's Truncate
// is a size change that a crash drops until Sync makes it durable.
func TestSimPlainTruncateIsDurableAtSync(t *testing.T) {
	for _, synced := range []bool{false, true} {
		d := blockdev.NewSimDir(blockdev.SimOptions{})
		f, err := d.OpenPlain("p", os.O_RDWR|os.O_CREATE)
		require.NoError(t, err)
		require.NoError(t, d.Sync())
		_, err = f.Write(make([]byte, 100))
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Truncate(10))
		want := int64(100)
		if synced {
			require.NoError(t, f.Sync())
			want = 10
		}
		size, err := d.Crash(blockdev.CrashDropUnsynced).Size("p")
		require.NoError(t, err)
		assert.Equal(t, want, size, "synced after the truncate: %v", synced)
	}
}

// TestSeamMapShared: a writable mapping creates the file at its size;
// read-only mappings of it share its memory (an atomic store through one
// is loaded through the other) and identify the file; a missing or short
// file is not mapped read-only; a read-only mapping has no descriptor.
func TestSeamMapShared(t *testing.T) {
	for name, mk := range seamDirs() {
		t.Run(name, func(t *testing.T) {
			d := mk(t)
			_, err := d.MapShared("m", 4096, false)
			require.ErrorIs(t, err, fs.ErrNotExist)
			w, err := d.MapShared("m", 4096, true)
			require.NoError(t, err)
			size, err := d.Size("m")
			require.NoError(t, err)
			assert.Equal(t, int64(4096), size)
			r, err := d.MapShared("m", 4096, false)
			require.NoError(t, err)
			require.Len(t, r.Bytes(), 4096)
			word := func(m blockdev.SharedMapping) *atomic.Uint64 {
				return (*atomic.Uint64)(unsafe.Pointer(&m.Bytes()[8]))
			}
			word(w).Store(42)
			assert.Equal(t, uint64(42), word(r).Load(), "the reader's mapping sees the writer's store")
			st, err := d.Stat("m")
			require.NoError(t, err)
			assert.True(t, st.SameFile(r.Stat()))
			_, err = r.ReadAt(make([]byte, 1), 0)
			assert.ErrorIs(t, err, os.ErrClosed, "a read-only mapping keeps no descriptor")
			_, err = w.ReadAt(make([]byte, 1), 4095)
			assert.NoError(t, err)
			require.NoError(t, r.Close())
			require.NoError(t, w.Close())

			f, err := d.OpenPlain("short", os.O_WRONLY|os.O_CREATE)
			require.NoError(t, err)
			_, err = f.Write(make([]byte, 100))
			require.NoError(t, err)
			require.NoError(t, f.Close())
			_, err = d.MapShared("short", 4096, false)
			assert.ErrorIs(t, err, blockdev.ErrShortFile)
		})
	}
}

// TestSeamWatch: a watch is ready after a device write, a rename, and a
// read of a named file through its writable mapping, and not before in
// the simulated directory, whose events are immediate.
func TestSeamWatch(t *testing.T) {
	for name, mk := range seamDirs() {
		t.Run(name, func(t *testing.T) {
			d := mk(t)
			m, err := d.MapShared("DURABLE", 4096, true)
			require.NoError(t, err)
			defer m.Close()
			dev, err := d.Open("a", blockdev.Options{Create: true, Buffered: true})
			require.NoError(t, err)
			defer dev.Close()
			ch, stop, err := d.Watch("DURABLE")
			if errors.Is(err, blockdev.ErrNoWatch) {
				t.Skip(err)
			}
			require.NoError(t, err)
			defer stop()
			quiet := func(what string) {
				if name == "sim" {
					select {
					case <-ch:
						t.Fatalf("ready before %s", what)
					default:
					}
				}
			}
			for _, c := range []struct {
				what   string
				change func() error
			}{
				{"a write", func() error {
					_, err := dev.WriteAt(dev.Alignment().Alloc(dev.Alignment().Offset), 0)
					return err
				}},
				{"a rename", func() error { return d.Rename("a", "b") }},
				{"a read of the named file", func() error { _, err := m.ReadAt(make([]byte, 1), 4095); return err }},
			} {
				quiet(c.what)
				require.NoError(t, c.change(), c.what)
				<-ch
			}
			stop()
			require.NoError(t, d.Rename("b", "a"))
			quiet("nothing, once stopped")
		})
	}
}
