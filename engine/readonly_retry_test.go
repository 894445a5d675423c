package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// churningDir is a directory whose listing changes at every List (a file
// no log reads appears under a new name each time), as a writer that
// never pauses would make it; Open of the file named gone fails as a file
// removed since the listing.
type churningDir struct {
	blockdev.Dir
	churn bool
	gone  string
	lists atomic.Int64
	opens atomic.Int64 // Opens of the file named watch
	watch string
}

func (d *churningDir) List() ([]string, error) {
	names, err := d.Dir.List()
	if n := d.lists.Add(1); d.churn {
		names = append(names, fmt.Sprintf("zz-other-%06d", n))
	}
	return names, err
}

func (d *churningDir) Open(name string, opts blockdev.Options) (blockdev.Device, error) {
	if name == d.watch {
		d.opens.Add(1)
	}
	if name == d.gone {
		return nil, fmt.Errorf("open %s: %w", name, os.ErrNotExist)
	}
	return d.Dir.Open(name, opts)
}

// mappingsOf counts the process's mappings of files under dir.
func mappingsOf(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	require.NoError(t, err)
	return strings.Count(string(b), dir)
}

// TestReadOnlyOpenRetriesLeakNothing: a read-only open that fails while
// the listing keeps changing makes exactly readOnlyOpenTries attempts and
// says so, one whose listing stands still makes one; either way no file,
// mapping or goroutine of an attempt outlives it, and the error is the
// damage found (corruption, or a file gone).
func TestReadOnlyOpenRetriesLeakNothing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		damage  func(t *testing.T, path string, bases []uint64) (watch, gone string)
		corrupt bool // else a file gone: ErrOutOfRange
	}{
		{name: "a sealed segment missing", corrupt: true, damage: func(t *testing.T, path string, bases []uint64) (string, string) {
			require.NoError(t, os.Remove(filepath.Join(path, segName(bases[2]))))
			return segName(bases[3]), ""
		}},
		{name: "acknowledged frame of the active segment damaged", corrupt: true, damage: func(t *testing.T, path string, bases []uint64) (string, string) {
			last := bases[len(bases)-1]
			f, err := os.OpenFile(filepath.Join(path, segName(last)), os.O_RDWR, 0)
			require.NoError(t, err)
			defer f.Close()
			_, err = f.WriteAt([]byte{0xff, 0xee}, 4096+64)
			require.NoError(t, err)
			return segName(last), ""
		}},
		{name: "a listed file gone", damage: func(t *testing.T, path string, bases []uint64) (string, string) {
			return segName(bases[1]), segName(bases[1])
		}},
	} {
		for _, churn := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/churn=%v", tc.name, churn), func(t *testing.T) {
				path := t.TempDir()
				w := realLog(t, path)
				fillSegments(t, w, 4)
				_, err := w.Append([]byte("in the active segment"), []byte("and another"))
				require.NoError(t, err)
				var bases []uint64
				for _, s := range w.Segments() {
					bases = append(bases, s.Base)
				}
				require.NoError(t, w.Close())
				// Without the manifest every file is opened and checked
				// (no segment is trusted lazily, nor the clean close).
				require.NoError(t, os.Remove(filepath.Join(path, manifestName)))
				watch, gone := tc.damage(t, path, bases)
				od, err := blockdev.OpenDir(path, false)
				require.NoError(t, err)
				d := &churningDir{Dir: od, churn: churn, gone: gone, watch: watch}
				opts := realOptions()
				opts.ReadOnly, opts.Dir = true, d

				// One open to warm what the process keeps (the runtime's
				// own mappings and goroutines), then the one counted.
				_, err = Open(path, opts)
				require.Error(t, err)
				fds, maps, goroutines := openFDs(t), mappingsOf(t, path), runtime.NumGoroutine()
				d.opens.Store(0)
				l, err := Open(path, opts)
				require.Error(t, err)
				require.Nil(t, l)
				if tc.corrupt {
					require.ErrorIs(t, err, ErrCorrupt)
				} else {
					require.ErrorIs(t, err, ErrOutOfRange)
					require.ErrorIs(t, err, os.ErrNotExist)
				}
				if churn {
					assert.Equal(t, int64(readOnlyOpenTries), d.opens.Load(), "attempts")
					assert.Contains(t, err.Error(), fmt.Sprintf("during each of %d attempts", readOnlyOpenTries))
					assert.Contains(t, err.Error(), "no writer held its lock after the last one", "the churning directory has no lock: no writer is blamed")
				} else {
					assert.Equal(t, int64(1), d.opens.Load(), "attempts")
					assert.NotContains(t, err.Error(), "attempts")
				}
				for i := 0; i < 100000 && runtime.NumGoroutine() > goroutines; i++ {
					runtime.Gosched() // a closed cache's goroutines are returning
				}
				assert.Equal(t, fds, openFDs(t), "open files after the failed open")
				assert.Equal(t, maps, mappingsOf(t, path), "mappings of the store's files after the failed open")
				// A few goroutines of other tests' timers may start meanwhile;
				// one left by each of 32 attempts would not pass.
				if !assert.LessOrEqual(t, runtime.NumGoroutine(), goroutines+4, "goroutines after the failed open") {
					buf := make([]byte, 1<<20)
					t.Logf("%s", buf[:runtime.Stack(buf, true)])
				}
			})
		}
	}
}

// TestChurnAdviceBlamesOnlyALiveWriter: a read-only open that gave up
// because the directory kept changing blames the writer only while one
// holds the store's lock.
func TestChurnAdviceBlamesOnlyALiveWriter(t *testing.T) {
	path := t.TempDir()
	w := realLog(t, path)
	assert.Contains(t, churnAdvice(path, realOptions(), 32), "the log's writer changed "+path+" during each of 32 attempts")
	require.NoError(t, w.Close())
	advice := churnAdvice(path, realOptions(), 32)
	assert.Contains(t, advice, path+" changed during each of 32 attempts")
	assert.Contains(t, advice, "no writer held its lock after the last one")
}
