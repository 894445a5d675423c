package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzPageLogOpen feeds arbitrary bytes to the page-cache log's scan as its
// file: open never panics or fails on content, keeps exactly the whole,
// valid frames at the front (each reads back), cuts the rest, and a second
// open finds the same log.
func FuzzPageLogOpen(f *testing.F) {
	valid := func(n int) []byte {
		dir := f.TempDir()
		p, err := openPageLog(dir)
		require.NoError(f, err)
		for i := 1; i <= n; i++ {
			rec := make([]byte, 20*i)
			fillRecord(rec, uint64(i))
			_, err := p.Append([][]byte{rec})
			require.NoError(f, err)
		}
		require.NoError(f, p.Close())
		b, err := os.ReadFile(filepath.Join(dir, pageLogFile))
		require.NoError(f, err)
		return b
	}
	three := valid(3)
	f.Add(three)
	f.Add(three[:len(three)-5])
	f.Add(append(append([]byte{}, three...), make([]byte, 64)...))
	f.Add([]byte{})
	f.Add(make([]byte, 8))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		path := filepath.Join(dir, pageLogFile)
		require.NoError(t, os.WriteFile(path, data, 0o644))
		p, err := openPageLog(dir)
		require.NoError(t, err)
		// What was kept re-encodes to the file's bytes, frame by frame.
		var again []byte
		var buf []byte
		for i := range p.offs {
			buf, err = p.Read(uint64(i+1), buf[:0])
			require.NoError(t, err, "index %d", i+1)
			require.NotEmpty(t, buf)
			again = appendFrame(again, buf)
		}
		require.Equal(t, p.end, int64(len(again)))
		require.True(t, bytes.Equal(again, data[:p.end]), "the kept frames are the file's first bytes")
		n := len(p.offs)
		require.NoError(t, p.Close())
		st, err := os.Stat(path)
		require.NoError(t, err)
		require.Equal(t, int64(len(again)), st.Size(), "the tail is cut")
		p, err = openPageLog(dir)
		require.NoError(t, err)
		require.Equal(t, n, len(p.offs), "a second open finds the same records")
		require.NoError(t, p.Close())
	})
}
