package engine

import (
	"bytes"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMmapRacingCloseMapsOnlyTheSegment: Mmap of a view that another
// goroutine closes must fail (ErrClosed, or an error) or map the
// segment's own file, never another file that took the closed
// descriptor's number.
func TestMmapRacingCloseMapsOnlyTheSegment(t *testing.T) {
	path := t.TempDir()
	l := realLog(t, path)
	defer l.Close()
	fillSegments(t, l, 1)
	info, want := firstSegment(t, l, path)
	require.True(t, info.Sealed)
	other := filepath.Join(t.TempDir(), "other")
	require.NoError(t, os.WriteFile(other, bytes.Repeat([]byte{0xee}, len(want)+4096), 0o644))

	var wrong, mapped, closedOK int
	for i := 0; i < 3000 && wrong == 0; i++ {
		v, err := l.OpenSegment(info.Base)
		require.NoError(t, err)
		var wg sync.WaitGroup
		var fs []*os.File
		wg.Add(2)
		go func() { defer wg.Done(); v.Close() }()
		go func() { // takes the freed descriptor number
			defer wg.Done()
			for k := 0; k < 4; k++ {
				if f, err := os.Open(other); err == nil {
					fs = append(fs, f)
				}
			}
		}()
		m, err := v.Mmap()
		wg.Wait()
		if err == nil {
			mapped++
			if !bytes.Equal(m.Bytes()[:64], want[:64]) {
				wrong++
				t.Errorf("iteration %d: the mapping holds another file's bytes: % x", i, m.Bytes()[:16])
			}
			m.Close()
		} else {
			closedOK++
		}
		for _, f := range fs {
			f.Close()
		}
	}
	t.Logf("mapped %d, refused %d, wrong %d", mapped, closedOK, wrong)
}

// TestExportAndReadAtRacingCloseAndUnload: WriteTo and ReadAt racing the
// view's Close and the segment's unload (and reloads by new views) end
// with the exact bytes or ErrClosed, never a panic, and leave the
// segment's references at the owner's.
func TestExportAndReadAtRacingCloseAndUnload(t *testing.T) {
	path := t.TempDir()
	l := realLog(t, path)
	defer l.Close()
	fillSegments(t, l, 1)
	info, want := firstSegment(t, l, path)
	for i := 0; i < 500; i++ {
		v, err := l.OpenSegment(info.Base)
		require.NoError(t, err)
		s := v.s
		var wg sync.WaitGroup
		wg.Add(4)
		go func() {
			defer wg.Done()
			var b bytes.Buffer
			if _, err := v.WriteTo(&b); err != nil {
				assert.ErrorIs(t, err, ErrClosed, "WriteTo")
			} else if !bytes.Equal(b.Bytes(), want) {
				t.Errorf("WriteTo: wrong bytes")
			}
		}()
		go func() {
			defer wg.Done()
			b := make([]byte, len(want))
			if n, err := v.ReadAt(b, 0); err != nil {
				assert.ErrorIs(t, err, ErrClosed, "ReadAt")
			} else if !bytes.Equal(b[:n], want) {
				t.Errorf("ReadAt: wrong bytes")
			}
		}()
		go func() { defer wg.Done(); v.Close() }()
		go func() {
			defer wg.Done()
			for k := 0; k < 50; k++ {
				s.unload()
			}
		}()
		wg.Wait()
		s.unload()
		require.Equal(t, int64(1), s.refs.Load(), "iteration %d: refs back to the owner's", i)
	}
}
