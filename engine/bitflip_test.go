package engine

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// flipStore is a small store on disk, closed cleanly, and what it holds.
type flipStore struct {
	dir        string
	files      map[string][]byte // every file's bytes
	start, end uint64            // the acknowledged records are [start, end)
}

func flipRecord(off uint64) []byte {
	label := fmt.Sprintf("flip record %06d ", off)
	return testutil.Labelled(label, 'x', len(label)+int(off%53))
}

// flipCacheBytes is the cache of the flip store's logs: more than the
// store holds.
const flipCacheBytes = 1 << 20

// buildFlipStore writes three sealed segments and an active one, drops a
// prefix (so START exists), and closes.
func buildFlipStore(t *testing.T) flipStore {
	t.Helper()
	dir := t.TempDir()
	opts := DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.IndexInterval, opts.CacheBytes, opts.Logger = 64<<10, 32<<10, 1024, flipCacheBytes, quiet
	l, err := Open(dir, opts)
	require.NoError(t, err)
	for seg := 0; seg < 4; seg++ {
		for i := 0; i < 12; i++ {
			first := l.EndOffset()
			_, err := l.Append(flipRecord(first), flipRecord(first+1), flipRecord(first+2))
			require.NoError(t, err)
		}
		if seg < 3 {
			require.NoError(t, l.Roll())
		}
	}
	require.NoError(t, l.TruncateFront(5))
	fs := flipStore{dir: dir, files: map[string][]byte{}, start: l.StartOffset(), end: l.EndOffset()}
	require.NoError(t, l.Close())
	names, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n.Name()))
		require.NoError(t, err)
		fs.files[n.Name()] = b
	}
	return fs
}

// restore writes every file back as it was and removes any other. A file
// whose bytes are unchanged is left alone: rewriting it (a truncation and
// new blocks) would cost the filesystem more than the flip's checks do.
func (fs flipStore) restore(t *testing.T) {
	names, err := os.ReadDir(fs.dir)
	require.NoError(t, err)
	for _, n := range names {
		if _, ok := fs.files[n.Name()]; !ok {
			require.NoError(t, os.RemoveAll(filepath.Join(fs.dir, n.Name())))
		}
	}
	for name, b := range fs.files {
		path := filepath.Join(fs.dir, name)
		if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, b) {
			continue
		}
		require.NoError(t, os.WriteFile(path, b, 0o644))
	}
}

// copyTo is the same store in another directory (its own files, for a
// sweep that runs beside this one's).
func (fs flipStore) copyTo(t *testing.T, dir string) flipStore {
	t.Helper()
	c := fs
	c.dir = dir
	for name, b := range fs.files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), b, 0o644))
	}
	return c
}

// flipInPlace writes f's file with f's bit flipped, in place: only the
// flipped byte is written, the rest of the file (restored before) is as it
// was.
func (fs flipStore) flipInPlace(t *testing.T, f storeFlip) {
	t.Helper()
	fh, err := os.OpenFile(filepath.Join(fs.dir, f.file), os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = fh.WriteAt([]byte{fs.files[f.file][f.pos] ^ 1<<f.bit}, int64(f.pos))
	require.NoError(t, err)
	require.NoError(t, fh.Close())
}

// flips lists the bits the sweep flips: in each file, one bit of each of
// the first 64 bytes (where the headers are; rotating through the eight)
// and of every stride-th byte after them; with SEGSTORE_LONG=1 every bit of
// the first 64 bytes and one of every 61st byte.
func (fs flipStore) flips(stride int) (out []storeFlip) {
	if testutil.Long() {
		stride = 61
	}
	names := make([]string, 0, len(fs.files))
	for n := range fs.files {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		for p := range len(fs.files[n]) {
			switch {
			case p < 64 && testutil.Long():
				for b := uint(0); b < 8; b++ {
					out = append(out, storeFlip{n, p, b})
				}
			case p < 64 || p%stride == 0:
				out = append(out, storeFlip{n, p, uint(p % 8)})
			}
		}
	}
	return out
}

// storeFlip is one bit of one file of a store.
type storeFlip struct {
	file string
	pos  int
	bit  uint
}

// checkReads opens the store (read-only or not) and reads every
// acknowledged record by offset and by an iterator: each comes back exact
// or as a corruption error; none is missing without an error, none differs.
// So do the records of every sealed segment's mapping.
func (fs flipStore) checkReads(t *testing.T, what string, readOnly bool) {
	opts := DefaultOptions()
	// The store's own cache size (it holds the whole store either way):
	// the default's counters cost more to make and clear than the reads.
	opts.ReadOnly, opts.Logger, opts.CacheBytes = readOnly, quiet, flipCacheBytes
	l, err := Open(fs.dir, opts)
	if err != nil {
		require.True(t, isDamageError(err), "%s: open (read-only %v) fails with %v, not as damage", what, readOnly, err)
		return
	}
	defer l.Close()
	require.Equal(t, fs.start, l.StartOffset(), "%s: start (read-only %v)", what, readOnly)
	require.Equal(t, fs.end, l.EndOffset(), "%s: end (read-only %v): acknowledged records lost", what, readOnly)
	for off := fs.start; off < fs.end; off++ {
		got, err := l.Read(off, nil)
		if err != nil {
			require.True(t, isDamageError(err), "%s: read %d: %v", what, off, err)
			continue
		}
		require.Equal(t, flipRecord(off), got, "%s: read %d returned wrong bytes", what, off)
	}
	it := l.NewIterator(fs.start)
	off := fs.start
	for it.Next() {
		require.Equal(t, off, it.Offset(), "%s: iterator", what)
		require.Equal(t, flipRecord(off), it.Record(), "%s: iterator at %d returned wrong bytes", what, off)
		off++
	}
	if it.Err() != nil {
		require.True(t, isDamageError(it.Err()), "%s: iterator at %d: %v", what, off, it.Err())
	} else {
		require.Equal(t, fs.end, off, "%s: the iterator stopped early without an error", what)
	}
	// Each sealed segment read in place, through a mapping.
	for _, si := range l.Segments() {
		if !si.Sealed {
			continue
		}
		v, err := l.OpenSegment(si.Base)
		if err != nil {
			require.True(t, isDamageError(err), "%s: open segment %d: %v", what, si.Base, err)
			continue
		}
		m, err := v.Mmap()
		require.NoError(t, err, what)
		mi := m.NewIterator()
		off := si.Base
		for mi.Next() {
			require.Equal(t, off, mi.Offset(), "%s: mapped iterator", what)
			if off >= fs.start {
				require.Equal(t, flipRecord(off), mi.Record(), "%s: mapped iterator at %d returned wrong bytes", what, off)
			}
			off++
		}
		if mi.Err() != nil {
			require.True(t, isDamageError(mi.Err()), "%s: mapped iterator at %d: %v", what, off, mi.Err())
		} else {
			require.Equal(t, si.Next, off, "%s: the mapped iterator of segment %d stopped early without an error", what, si.Base)
		}
		require.NoError(t, m.Close())
		require.NoError(t, v.Close())
	}
}

// isDamageError: an error that says the store is damaged, and says where
// and what to do once: an engine error does not carry a wal error's whole
// message (a second location and a second advice) inside its own.
func isDamageError(err error) bool {
	if err != nil {
		if msg := err.Error(); strings.Contains(msg, "engine: ") && strings.Contains(msg, "wal: corruption") {
			return false
		}
	}
	return errors.Is(err, ErrCorrupt) || errors.Is(err, wal.ErrNotWAL)
}

// TestEveryBitFlipOfAStore flips bits of every file of a closed store (three
// sealed segments, an active one, MANIFEST, START, DURABLE), one at a time:
// verify reports each flip in what a segment holds or says (its header,
// frames, footer), read-only and read-write opens either refuse it as
// damage or give back every acknowledged record exact, and no read or
// iterator (nor an in-place iterator of a sealed segment's mapping) returns
// wrong bytes or silently fewer records.
//
// The flips are shared out among flipShards copies of the store, swept at
// once: each flip's opens wait on the disk (the read-write open syncs), so
// the copies' waits overlap. Every flip is still made and checked.
func TestEveryBitFlipOfAStore(t *testing.T) {
	fs := buildFlipStore(t)
	all := fs.flips(1999)
	var mu sync.Mutex
	reported := map[string]int{}
	var wg sync.WaitGroup
	for shard := range flipShards {
		c := fs.copyTo(t, t.TempDir())
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(fmt.Sprint("shard=", shard), func(t *testing.T) {
				for i := shard; i < len(all); i += flipShards {
					f := all[i]
					what := fmt.Sprintf("%s byte %d bit %d", f.file, f.pos, f.bit)
					c.flipInPlace(t, f)
					rep, err := Verify(c.dir, VerifyOptions{})
					if err == nil && rep.Clean() {
						require.False(t, verifyChecks(f.file), "%s: verify found nothing", what)
					} else {
						mu.Lock()
						reported[f.file]++
						mu.Unlock()
					}
					c.checkReads(t, what, true)
					c.checkReads(t, what, false)
					c.restore(t)
				}
			})
		}()
	}
	wg.Wait()
	t.Logf("%d flips over %d files; reported by verify, by file: %v", len(all), len(fs.files), reported)
}

// flipShards is how many copies of the store TestEveryBitFlipOfAStore
// sweeps at once.
const flipShards = 4

// verifyChecks says whether verify checks every byte of file: segments,
// START and MANIFEST. DURABLE holds no durable data (a live writer's
// acknowledged end, shared with readers through a mapping and rewritten on
// every flush; ignored when no writer holds LOCK), and LOCK is empty.
func verifyChecks(file string) bool {
	_, isSegment := ParseSegmentName(file)
	return isSegment || file == startName || file == manifestName
}
