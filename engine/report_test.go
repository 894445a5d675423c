package engine

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// damageFooter flips a bit in the footer of segment base of dir, in a
// place its checksum covers (the segment is then served from an index
// rebuilt from its records).
func damageFooter(t *testing.T, dir *blockdev.SimDir, base uint64) {
	t.Helper()
	seg := dir.File(segName(base))
	seg.FlipBit(footerPos(t, seg)+wal.FrameHeaderLen+40, 2)
}

// TestLastOpenRecoveryIsASnapshotOfOpen: Stats().LastOpenRecovery is what
// Open found and did, as it was when Open returned, whatever the log does
// after: lazy loads of sealed segments (one of them with a damaged
// footer, loaded again after the open-file bound closed it), a
// TruncateBack that reopens the active segment, a Refresh that opens the
// segments a writer sealed since. Each of them used to add to it. Stats
// runs meanwhile, from another goroutine.
func TestLastOpenRecoveryIsASnapshotOfOpen(t *testing.T) {
	tests := []struct {
		name string
		// open returns the log to look at; act does what must not change
		// its report.
		open func(t *testing.T) *Log
		act  func(t *testing.T, l *Log)
	}{
		{"lazy loads, one finding a damaged footer", func(t *testing.T) *Log {
			dir, bases := fourSegments(t)
			damageFooter(t, dir, bases[1])
			opts := testOptions(dir)
			opts.MaxOpenSegments = 1 // the damaged segment is closed and loaded again
			l, err := Open("sim", opts)
			require.NoError(t, err)
			return l
		}, func(t *testing.T, l *Log) {
			requireAll(t, l, 120)
			requireAll(t, l, 120)
		}},
		{"TruncateBack reopening the active segment", func(t *testing.T) *Log {
			dir, _ := fourSegments(t)
			l, err := Open("sim", testOptions(dir))
			require.NoError(t, err)
			return l
		}, func(t *testing.T, l *Log) {
			require.NoError(t, l.TruncateBack(100))
			requireAll(t, l, 100)
		}},
		{"Refresh opening the segments the writer sealed", func(t *testing.T) *Log {
			writer, reader := besideWriter(t)
			_, err := writer.Append([]byte("a"))
			require.NoError(t, err)
			fillSegments(t, writer, 3)
			return reader
		}, func(t *testing.T, l *Log) {
			changed, err := l.Refresh()
			require.NoError(t, err)
			require.True(t, changed)
			require.Greater(t, len(l.Segments()), 3)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := tc.open(t)
			t.Cleanup(func() { l.Close() })
			at := l.Stats().LastOpenRecovery
			// Stats and Writer run all along, so that under -race the
			// report's copy is shown ordered with what act adds to the
			// log's reports.
			started, done, stopped := make(chan struct{}), make(chan struct{}), make(chan struct{})
			go func() {
				defer close(stopped)
				for calls := 0; ; calls++ {
					if calls == 1 {
						close(started)
					}
					select {
					case <-done:
						return
					default:
					}
					assert.Equal(t, at, l.Stats().LastOpenRecovery, "while acting")
					l.Writer()
				}
			}()
			<-started
			tc.act(t, l)
			close(done)
			<-stopped
			assert.Equal(t, at, l.Stats().LastOpenRecovery)
		})
	}
}

// TestLastOpenRecoveryIsTheCallersCopy: a caller may change the report
// Stats returns (sort it, reuse its slices) without changing what the
// log reports next.
func TestLastOpenRecoveryIsTheCallersCopy(t *testing.T) {
	dir, bases := fourSegments(t)
	damageFooter(t, dir, bases[1])
	require.NoError(t, dir.Remove(manifestName)) // found by Open, not at first use
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	defer l.Close()
	rec := l.Stats().LastOpenRecovery
	require.Equal(t, []uint64{bases[1]}, rec.RebuiltFooters)
	rec.RebuiltFooters[0] = 7
	rec.RebuiltFooters = append(rec.RebuiltFooters[:1], 8)
	assert.Equal(t, []uint64{bases[1]}, l.Stats().LastOpenRecovery.RebuiltFooters)
}

// TestFootersRebuiltSinceOpen: a damaged footer that a lazy load finds
// after Open (its segment trusted at Open through the manifest) is
// reported in Stats().RebuiltFootersSinceOpen, once however often the
// open-file bound closes and reloads the segment; the next writable open
// rebuilds it on disk and reports it in its LastOpenRecovery.
func TestFootersRebuiltSinceOpen(t *testing.T) {
	dir, bases := fourSegments(t)
	damageFooter(t, dir, bases[1])
	opts := testOptions(dir)
	opts.MaxOpenSegments = 1
	l, err := Open("sim", opts)
	require.NoError(t, err)
	assert.Empty(t, l.Stats().RebuiltFootersSinceOpen)
	for range 3 {
		requireAll(t, l, 120) // each pass reloads every sealed segment
		assert.Equal(t, []uint64{bases[1]}, l.Stats().RebuiltFootersSinceOpen)
	}
	assert.Empty(t, l.Stats().LastOpenRecovery.RebuiltFooters, "found after Open")
	require.NoError(t, l.Close())

	l, err = Open("sim", opts)
	require.NoError(t, err)
	defer l.Close()
	assert.Equal(t, []uint64{bases[1]}, l.Stats().LastOpenRecovery.RebuiltFooters)
	assert.Empty(t, l.Stats().RebuiltFootersSinceOpen)
}
