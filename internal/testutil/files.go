package testutil

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// XorByte changes the byte of file at pos in place: it is XORed with mask
// (a mask of one bit flips that bit). The rest of the file is untouched,
// so a process that has the file open or mapped sees only that byte
// change.
func XorByte(t testing.TB, file string, pos int64, mask byte) {
	t.Helper()
	XorRange(t, file, pos, 1, mask)
}

// XorRange XORs each of the n bytes of file at [at, at+n) with mask, in
// place. The range must lie inside the file.
func XorRange(t testing.TB, file string, at int64, n int, mask byte) {
	t.Helper()
	rewriteRange(t, file, at, n, func(b []byte) {
		for i := range b {
			b[i] ^= mask
		}
	})
}

// ZeroRange sets the n bytes of file at [at, at+n) to zero, in place. The
// range must lie inside the file.
func ZeroRange(t testing.TB, file string, at int64, n int) {
	t.Helper()
	rewriteRange(t, file, at, n, func(b []byte) { clear(b) })
}

// ReadTail returns the last n bytes of file, or the whole file when it is
// shorter.
func ReadTail(t testing.TB, file string, n int64) []byte {
	t.Helper()
	f, err := os.Open(file)
	require.NoError(t, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(t, err)
	at := max(0, fi.Size()-n)
	b := make([]byte, fi.Size()-at)
	_, err = f.ReadAt(b, at)
	require.NoError(t, err)
	return b
}

// rewriteRange reads [at, at+n) of file, lets change modify it and writes
// it back at the same place.
func rewriteRange(t testing.TB, file string, at int64, n int, change func([]byte)) {
	t.Helper()
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	b := make([]byte, n)
	_, err = f.ReadAt(b, at)
	require.NoError(t, err, "%s: [%d, %d) is not inside the file", file, at, at+int64(n))
	change(b)
	_, err = f.WriteAt(b, at)
	require.NoError(t, err)
}
