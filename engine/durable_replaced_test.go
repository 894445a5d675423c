package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAReaderFollowsAReplacedDurableFile: a read-only log that mapped the
// DURABLE file, which was then removed and created afresh by the next
// writer (a new inode), reads the new file's words, not the old ones it
// still has mapped. The old words said either that the log was closed
// (their writer closed it), which beside the live new writer showed every
// frame on the device, acknowledged or not; or that their writer, killed,
// had acknowledged an old end, which held the reader there for ever while
// the new writer acknowledged more.
func TestAReaderFollowsAReplacedDurableFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		closed bool // the old words' writer closed the log (else it was killed)
	}{
		{name: "old words of a closed log", closed: true},
		{name: "old words of a killed writer", closed: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, ends := frameLog(t, 5)
			// The first writer has acknowledged two frames; the reader shows them.
			fw := newFakeWriter(t, path, ends[1])
			r := readerOf(t, path)
			require.Equal(t, ends[1].off, r.EndOffset())

			// It goes; the next writer takes the lock, finds no DURABLE (removed
			// meanwhile) and creates one, and has acknowledged three frames.
			if tc.closed {
				fw.d.word(durOpen).Store(0)
			}
			fw.d.m.Close()
			require.NoError(t, os.Remove(filepath.Join(path, durableName)))
			d, err := createDurable(osDir(t, path))
			require.NoError(t, err)
			defer func() {
				d.close(true)
				require.NoError(t, fw.unlock())
			}()
			d.publish(0, ends[2])

			_, err = r.Refresh()
			require.NoError(t, err)
			require.Equal(t, ends[2].off, r.EndOffset(), "the reader shows what the live writer acknowledged, no more, no less")
			_, err = r.Read(ends[2].off, nil)
			require.ErrorIs(t, err, ErrOutOfRange, "a record the live writer has not acknowledged")
			info := r.Writer()
			require.True(t, info.Published)
			require.Equal(t, ends[2].off, info.Acknowledged)

			d.publish(0, ends[3])
			_, err = r.Refresh()
			require.NoError(t, err)
			require.Equal(t, ends[3].off, r.EndOffset())
		})
	}
}

// TestAReaderFollowsARemovedDurableFile: DURABLE removed (and not
// replaced) while its writer lives: the writer publishes in the file it
// has open, and a reader that mapped it follows it still.
func TestAReaderFollowsARemovedDurableFile(t *testing.T) {
	path, ends := frameLog(t, 5)
	fw := newFakeWriter(t, path, ends[1])
	defer fw.gone(t)
	r := readerOf(t, path)
	require.Equal(t, ends[1].off, r.EndOffset())
	require.NoError(t, os.Remove(filepath.Join(path, durableName)))
	fw.d.publish(0, ends[3])
	_, err := r.Refresh()
	require.NoError(t, err)
	require.Equal(t, ends[3].off, r.EndOffset())
	require.Equal(t, ends[3].off, r.Writer().Acknowledged)
}
