package blockdev

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/segstore/segstore/internal/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestWatchDirSeesReadsOfANamedFileCreatedLater: a watch that names a
// file not there yet watches its reads from the moment it is created;
// its appearance is the one event before the read. The bound on
// each wait detects a wedge, not a speed.
func TestWatchDirSeesReadsOfANamedFileCreatedLater(t *testing.T) {
	dir := t.TempDir()
	changes, stop, err := WatchDir(dir, "NAMED")
	require.NoError(t, err)
	defer stop()
	// Written elsewhere and renamed in: one event (IN_MOVED_TO) before the
	// read, which must return a byte to count as one.
	other := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(other, []byte("x"), 0o644))
	require.NoError(t, os.Rename(other, filepath.Join(dir, "NAMED")))
	testutil.Receive(t, changes, "the watch was not ready after the file's appearance")
	f, err := os.Open(filepath.Join(dir, "NAMED"))
	require.NoError(t, err)
	defer f.Close()
	_, err = f.ReadAt(make([]byte, 1), 0)
	require.NoError(t, err)
	testutil.Receive(t, changes, "the watch was not ready after a read of the named file")
}

// TestInotifyEvents: whole events are decoded with their names (NUL
// padding cut), a name longer than what is left ends the decoding, and a
// partial header is ignored.
func TestInotifyEvents(t *testing.T) {
	event := func(mask uint32, name string, pad int) []byte {
		b := make([]byte, unix.SizeofInotifyEvent+len(name)+pad)
		binary.NativeEndian.PutUint32(b[4:], mask)
		binary.NativeEndian.PutUint32(b[12:], uint32(len(name)+pad))
		copy(b[unix.SizeofInotifyEvent:], name)
		return b
	}
	type seen struct {
		mask uint32
		name string
	}
	decode := func(b []byte) (got []seen) {
		inotifyEvents(b, func(mask uint32, name string) { got = append(got, seen{mask, name}) })
		return got
	}
	two := append(event(unix.IN_CREATE, "DURABLE", 9), event(unix.IN_ACCESS, "", 0)...)
	assert.Equal(t, []seen{{unix.IN_CREATE, "DURABLE"}, {unix.IN_ACCESS, ""}}, decode(two))
	assert.Equal(t, []seen{{unix.IN_CREATE, "DURABLE"}}, decode(two[:len(two)-1]), "a partial header")
	long := event(unix.IN_MODIFY, "x", 3)
	binary.NativeEndian.PutUint32(long[12:], 1<<31)
	assert.Empty(t, decode(long), "a name past the end")
	assert.Empty(t, decode(nil))
}

// FuzzInotifyEvents: any bytes decode without a panic, every name lies
// within them and holds no NUL, and the events decoded never take more
// bytes than given; events encoded as the kernel does (names
// NUL-padded, from the fuzzer's bytes) decode to exactly those events,
// and any cut of them to exactly the whole events before the cut.
func FuzzInotifyEvents(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, unix.SizeofInotifyEvent+8))
	f.Add([]byte{0x02, 7, 9, 'D', 'U', 'R', 'A', 'B', 'L', 'E', 0x01, 0, 0})
	type seen struct {
		mask uint32
		name string
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		used := 0
		inotifyEvents(b, func(_ uint32, name string) {
			if len(name) > len(b) || strings.IndexByte(name, 0) >= 0 {
				t.Fatalf("a name %q from %d bytes", name, len(b))
			}
			used += unix.SizeofInotifyEvent + len(name)
		})
		if used > len(b) {
			t.Fatalf("events of %d bytes from %d", used, len(b))
		}

		// The same bytes as events: mask, name length, padding, name.
		var want []seen
		var enc []byte
		var ends []int
		for p := b; len(p) >= 3; {
			mask, n, pad := uint32(p[0]), int(p[1]%24), int(p[2]%9)
			p = p[3:]
			n = min(n, len(p))
			name := strings.ReplaceAll(string(p[:n]), "\x00", "")
			p = p[n:]
			ev := make([]byte, unix.SizeofInotifyEvent+len(name)+pad)
			binary.NativeEndian.PutUint32(ev[4:], mask)
			binary.NativeEndian.PutUint32(ev[12:], uint32(len(name)+pad))
			copy(ev[unix.SizeofInotifyEvent:], name)
			want = append(want, seen{mask, name})
			enc = append(enc, ev...)
			ends = append(ends, len(enc))
		}
		for cut := 0; cut <= len(enc); cut++ {
			var got []seen
			inotifyEvents(enc[:cut], func(mask uint32, name string) { got = append(got, seen{mask, name}) })
			whole := 0
			for whole < len(ends) && ends[whole] <= cut {
				whole++
			}
			if len(got) != whole || (whole > 0 && !slices.Equal(got, want[:whole])) {
				t.Fatalf("%d bytes of %d decode to %v, want %v", cut, len(enc), got, want[:whole])
			}
		}
	})
}
