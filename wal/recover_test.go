package wal

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// testFile is a small wal file built on a Sim, with what we know about it.
type testFile struct {
	image   []byte   // final synced image
	before  []byte   // image before the last Append
	frames  []Frame  // every frame (Payload not kept)
	firsts  []uint64 // first offset of each frame
	next    uint64   // offset after the last record
	lastPos int64    // position of the last frame
}

const testMaxWrite = 16 << 10

func buildFile(t *testing.T, batches int, prealloc int64) testFile {
	t.Helper()
	dev := newSim(42)
	w, err := Create(dev, 0, Options{MaxWrite: testMaxWrite, Preallocate: prealloc, PreZero: true})
	require.NoError(t, err)
	var tf testFile
	for i := 0; i < batches; i++ {
		if i == batches-1 {
			tf.before = dev.Bytes()
		}
		n := 1 + i%4
		first, err := w.Append(batch(tf.next, n)...)
		require.NoError(t, err)
		require.Equal(t, tf.next, first)
		tf.firsts = append(tf.firsts, first)
		tf.next += uint64(n)
	}
	require.NoError(t, w.Close())
	tf.image = dev.Bytes()
	s, err := NewScanner(dev)
	require.NoError(t, err)
	for s.Next() {
		f := s.Frame()
		f.Payload = nil
		tf.frames = append(tf.frames, f)
	}
	require.NoError(t, s.Err())
	require.Len(t, tf.frames, batches)
	tf.lastPos = tf.frames[len(tf.frames)-1].Pos
	return tf
}

func (tf testFile) frameAt(i int) Frame { return tf.frames[(i+len(tf.frames))%len(tf.frames)] }

// checkSurvivors asserts the records below upTo are all there, exact, and
// nothing else is.
func checkSurvivors(t *testing.T, got map[uint64][]byte, upTo uint64) {
	t.Helper()
	require.Len(t, got, int(upTo), "records that survive")
	for o := uint64(0); o < upTo; o++ {
		require.Equal(t, testutil.Record(o, recordSize(o)), got[o], "record %d", o)
	}
}

func TestRecoveryTable(t *testing.T) {
	tf := buildFile(t, 40, 128<<10)
	mid := tf.frameAt(20)
	last := tf.frameAt(-1)

	type outcome int
	const (
		clean outcome = iota
		torn
		corrupt
	)
	tests := []struct {
		name    string
		corrupt func(img []byte) []byte
		want    outcome
		pos     int64  // where the torn tail / corruption is reported
		survive uint64 // records that must come back, exact
	}{
		{"intact", func(b []byte) []byte { return b }, clean, 0, tf.next},
		{"last frame lost whole", func(b []byte) []byte { return tf.before }, clean, 0, tf.firsts[len(tf.firsts)-1]},
		{"last frame header sector zeroed", func(b []byte) []byte {
			zeroSector(b, last.Pos)
			return b
		}, torn, last.Pos, tf.firsts[len(tf.firsts)-1]},
		{"last frame cut by truncation", func(b []byte) []byte { return b[:last.Pos+FrameHeaderLen+3] }, torn, last.Pos, tf.firsts[len(tf.firsts)-1]},
		{"file truncated mid-log", func(b []byte) []byte { return b[:mid.Pos+10] }, torn, mid.Pos, tf.firsts[20]},
		{"zeroed block mid-log", func(b []byte) []byte {
			clear(b[mid.Pos : mid.Pos+4096])
			return b
		}, corrupt, mid.Pos, 0},
		{"flipped byte in mid header", func(b []byte) []byte {
			b[mid.Pos+17] ^= 0x40
			return b
		}, corrupt, mid.Pos, 0},
		{"flipped byte in mid payload", func(b []byte) []byte {
			b[mid.Pos+FrameHeaderLen+5] ^= 1
			return b
		}, corrupt, mid.Pos, 0},
		{"flipped byte in last synced frame", func(b []byte) []byte {
			b[last.End()-9] ^= 0x80
			return b
		}, corrupt, last.Pos, 0},
		{"misdirected frame (earlier frame copied over mid)", func(b []byte) []byte {
			f := tf.frameAt(3)
			copy(b[mid.Pos:], b[f.Pos:f.End()])
			return b
		}, corrupt, mid.Pos, 0},
		{"frame of another file at the same position", func(b []byte) []byte {
			other := buildFileWithID(t, 40)
			copy(b[mid.Pos:mid.End()], other[mid.Pos:mid.End()])
			return b
		}, corrupt, mid.Pos, 0},
		{"stray data far past the end", func(b []byte) []byte {
			b[len(b)-100] = 7
			return b
		}, corrupt, last.End(), 0},
		{"stray data within one write of the end", func(b []byte) []byte {
			b[last.End()+600] = 7
			return b
		}, torn, last.End(), tf.next},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := tc.corrupt(append([]byte(nil), tf.image...))
			dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
			rec, err := Recover(dev)
			switch tc.want {
			case corrupt:
				var ce *CorruptionError
				require.ErrorAs(t, err, &ce, "recovery must refuse: %v", err)
				assert.ErrorIs(t, err, ErrCorrupt)
				assert.Equal(t, tc.pos, ce.Position, "reported position; error: %v", err)
				assert.Contains(t, err.Error(), dev.Name(), "error names the file")
				assert.Contains(t, err.Error(), fmt.Sprintf("byte %d", tc.pos))
				// Open refuses too, and changes nothing.
				_, _, err = Open(dev, Options{})
				assert.ErrorIs(t, err, ErrCorrupt)
				assert.Equal(t, img, dev.Bytes(), "a refused open must not modify the file")
				return
			case torn:
				require.NoError(t, err)
				require.NotNil(t, rec.Torn, "a torn tail must be reported")
				assert.Equal(t, tc.pos, rec.Torn.Pos)
				assert.Positive(t, rec.Torn.Bytes)
			case clean:
				require.NoError(t, err)
				assert.Nil(t, rec.Torn)
			}
			got, _ := readAll(t, dev)
			checkSurvivors(t, got, tc.survive)

			// The writer cuts the tail and goes on from the last valid frame.
			w, rec2, err := Open(dev, Options{})
			require.NoError(t, err)
			assert.Equal(t, rec.Torn, rec2.Torn)
			first, err := w.Append(batch(tc.survive, 2)...)
			require.NoError(t, err)
			assert.Equal(t, tc.survive, first)
			require.NoError(t, w.Close())
			got, rec3 := readAll(t, dev)
			assert.Nil(t, rec3.Torn, "after the cut the file must end cleanly")
			checkSurvivors(t, got, tc.survive+2)
		})
	}
}

func buildFileWithID(t *testing.T, batches int) []byte {
	return buildFile(t, batches, 128<<10).image // a fresh random segment id
}

func zeroSector(b []byte, pos int64) {
	s := pos &^ (blockdev.SectorSize - 1)
	// Keep the bytes before pos (the previous frame's end shares the sector).
	clear(b[pos:min(s+blockdev.SectorSize, int64(len(b)))])
}

// TestTornLastWriteAtEverySector tears the last write at every sector
// boundary, keeping a prefix of its sectors, and also keeping only a suffix.
// The write starts at the block holding the end of the previous frame, which
// it rewrites with identical bytes: tearing those sectors must lose nothing
// that was already there. Every outcome must recover to either the state
// before the append or the state after it.
func TestTornLastWriteAtEverySector(t *testing.T) {
	tf := buildFile(t, 12, 0) // no preallocation: the file grows
	before, after := tf.before, tf.image
	last := tf.frameAt(-1)
	start := last.Pos &^ (4096 - 1) // the sim's block: where the last write began
	require.NotZero(t, last.Pos-start, "the test needs a last frame that shares its block with the previous one")
	require.Equal(t, before[start:last.Pos], after[start:last.Pos], "the rewritten prefix is identical")
	end := int64(len(after))
	for cut := start; cut <= end; cut += blockdev.SectorSize {
		for _, keepPrefix := range []bool{true, false} {
			img := make([]byte, len(after))
			copy(img, before)
			if keepPrefix {
				copy(img[start:cut], after[start:cut])
			} else {
				copy(img[cut:], after[cut:])
				copy(img[start:min(cut, int64(len(before)))], before[start:min(cut, int64(len(before)))])
			}
			name := fmt.Sprintf("cut=%d/prefix=%v", cut-start, keepPrefix)
			dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
			got, rec, err := tryReadAll(dev)
			require.NoError(t, err, name)
			n := uint64(len(got))
			require.True(t, n == tf.next || n == tf.firsts[len(tf.firsts)-1], "%s: %d records survive", name, n)
			checkSurvivors(t, got, n)
			if n != tf.next && rec.Torn == nil {
				// Only a tear that lost every new sector may look clean.
				require.Equal(t, make([]byte, end-last.Pos), img[last.Pos:], name)
			}
		}
	}
}
