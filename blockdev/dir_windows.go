package blockdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/windows"
)

// OpenRegular opens path with flag (and perm 0o644 if it creates it),
// and refuses, with ErrNotRegular, anything but a regular file.
func OpenRegular(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag, 0o644)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && !fi.Mode().IsRegular() {
		err = fmt.Errorf("%w: %s is a %s: remove it (a writer creates it anew)", ErrNotRegular, path, fileKind(fi.Mode()))
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// SyncDir: Windows has no directory fsync (a directory cannot be opened
// for FlushFileBuffers). NTFS records every create, rename and remove in
// its metadata journal, which it commits on its own within seconds;
// renames here are MOVEFILE_WRITE_THROUGH, so they are on disk when they
// return. SyncDir only checks that the directory is there.
func SyncDir(dir string) error {
	fi, err := os.Stat(dir)
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("%s is not a directory", dir)
	}
	if err != nil {
		return fmt.Errorf("blockdev: sync dir: %w", err)
	}
	return nil
}

// Deferred removal. Windows refuses to remove (or to replace by a rename)
// a file while a view of it is mapped, where Unix removes the name and
// keeps the file for those who hold it. So a file is first moved aside,
// to "<name>.segstore-aside-<kind>-<pid>-<n>" (a name List never shows),
// which frees its name at once, then removed; if the removal is refused,
// the aside name is kept in pending and removed again when a mapping is
// closed (Mapped.Close) and at the next Lock of the directory (a writer's
// open), which also clears what a crashed process left aside.

// asideSeq numbers the aside names of this process.
var asideSeq atomic.Uint64

func asideName(path, kind string) string {
	return fmt.Sprintf("%s%s%s-%d-%d", path, asideMark, kind, os.Getpid(), asideSeq.Add(1))
}

var pending struct {
	mu    sync.Mutex
	paths map[string]bool
}

// removeLater removes path now if Windows lets it, else records it for
// removePending.
func removeLater(path string) {
	if err := os.Remove(path); err == nil || errors.Is(err, os.ErrNotExist) {
		return
	}
	pending.mu.Lock()
	defer pending.mu.Unlock()
	if pending.paths == nil {
		pending.paths = map[string]bool{}
	}
	pending.paths[path] = true
}

// removePending tries again to remove the files moved aside whose removal
// was refused.
func removePending() {
	pending.mu.Lock()
	defer pending.mu.Unlock()
	for p := range pending.paths {
		if err := os.Remove(p); err == nil || errors.Is(err, os.ErrNotExist) {
			delete(pending.paths, p)
		}
	}
}

// removeFile moves path aside, then removes it, now or later.
func removeFile(path string) error {
	aside := asideName(path, "removed")
	if err := moveFile(path, aside); err != nil {
		return err
	}
	removeLater(aside)
	removePending()
	return nil
}

// renameFile renames oldPath to newPath, replacing it. A newPath that
// Windows refuses to replace (mapped) is moved aside first: if the
// process dies between the two moves, the next Lock of the directory
// moves it back (cleanAside), as if the rename had not happened.
func renameFile(oldPath, newPath string) error {
	err := moveFile(oldPath, newPath)
	if err == nil || !refusedInUse(err) {
		return err
	}
	aside := asideName(newPath, "replaced")
	if err := moveFile(newPath, aside); err != nil {
		return err
	}
	if err := moveFile(oldPath, newPath); err != nil {
		return errors.Join(err, moveFile(aside, newPath))
	}
	removeLater(aside)
	return nil
}

// refusedInUse: the error Windows gives for a file that is mapped or
// open without sharing.
func refusedInUse(err error) bool {
	return errors.Is(err, windows.ERROR_ACCESS_DENIED) || errors.Is(err, windows.ERROR_SHARING_VIOLATION) ||
		errors.Is(err, windows.ERROR_USER_MAPPED_FILE)
}

// moveFile is MoveFileEx(REPLACE_EXISTING | WRITE_THROUGH): it returns
// once the rename is on disk.
func moveFile(oldPath, newPath string) error {
	from, err := windows.UTF16PtrFromString(oldPath)
	if err == nil {
		var to *uint16
		if to, err = windows.UTF16PtrFromString(newPath); err == nil {
			err = windows.MoveFileEx(from, to, windows.MOVEFILE_REPLACE_EXISTING|windows.MOVEFILE_WRITE_THROUGH)
		}
	}
	if err != nil {
		return &os.LinkError{Op: "rename", Old: oldPath, New: newPath, Err: err}
	}
	return nil
}

// cleanAside removes what was moved aside in dir and is no longer
// mapped, and moves back a file moved aside by a rename that never
// finished (its name is free).
func cleanAside(dir string) {
	removePending()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		base, rest, ok := strings.Cut(e.Name(), asideMark)
		if !ok {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(rest, "replaced-") {
			if _, err := os.Lstat(filepath.Join(dir, base)); errors.Is(err, os.ErrNotExist) {
				_ = moveFile(p, filepath.Join(dir, base))
				continue
			}
		}
		removeLater(p)
	}
}
