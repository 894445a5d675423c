package wal

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

var testFooter = []byte("an index the engine owns: 17 bytes")

// sealedFile appends n batches of 2 records and seals; it returns the image
// just before the seal and after it.
func sealedFile(t *testing.T, mode SyncMode, n int) (before, after []byte, foot *Footer) {
	t.Helper()
	dev := newSim(11)
	w, err := Create(dev, 100, Options{SyncMode: mode, MaxWrite: 16 << 10, Preallocate: 64 << 10, PreZero: true})
	require.NoError(t, err)
	for i := 0; i < n; i++ {
		_, err := w.Append(batch(100+uint64(i)*2, 2)...)
		require.NoError(t, err)
	}
	require.NoError(t, w.Sync())
	before = dev.Bytes()
	foot, err = w.Seal(testFooter)
	require.NoError(t, err)
	return before, dev.Bytes(), foot
}

func TestSealRoundTrip(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncNever} {
		t.Run(mode.String(), func(t *testing.T) {
			_, img, foot := sealedFile(t, mode, 30)
			assert.Equal(t, int64(len(img)), foot.End, "the file ends at the footer")
			assert.Equal(t, uint64(160), foot.Next)
			assert.Equal(t, testFooter, foot.Data)

			dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
			rec, err := Recover(dev)
			require.NoError(t, err)
			require.NotNil(t, rec.Footer)
			assert.Nil(t, rec.Torn)
			assert.Equal(t, foot.Pos, rec.End, "records end where the footer starts")
			assert.Equal(t, uint64(160), rec.NextOffset)
			assert.True(t, bytes.HasPrefix(rec.Footer.Data, testFooter))
			assert.Less(t, len(rec.Footer.Data)-len(testFooter), 8, "at most 7 bytes of padding")

			hdr, rf, err := ReadSealed(dev)
			require.NoError(t, err)
			assert.Equal(t, uint64(100), hdr.BaseOffset)
			assert.Equal(t, rec.Footer, rf)

			got, _ := readAll(t, dev)
			assert.Len(t, got, 60)
			for o := uint64(100); o < 160; o++ {
				require.Equal(t, testutil.Record(o, recordSize(o)), got[o])
			}
			_, _, err = Open(dev, Options{})
			assert.ErrorIs(t, err, ErrSealed, "a sealed file takes no appends")
		})
	}
}

func TestSealRefusesWhatWouldNotFit(t *testing.T) {
	w, err := Create(newSim(12), 0, Options{MaxWrite: 16 << 10})
	require.NoError(t, err)
	_, err = w.Seal(make([]byte, 16<<10))
	assert.ErrorIs(t, err, ErrBatchTooLarge)
	_, err = w.Seal(nil)
	require.NoError(t, err, "an empty segment can be sealed")
	_, err = w.Append([]byte("x"))
	assert.ErrorIs(t, err, ErrClosed, "nothing may follow the footer")
	assert.ErrorIs(t, w.Close(), ErrClosed)
}

// TestInterruptedSeal tears the seal's write at every sector and also
// keeps the footer without the final truncate: each image must recover
// either sealed (footer intact) or unsealed (footer cut as a torn tail),
// with every record intact.
func TestInterruptedSeal(t *testing.T) {
	before, after, foot := sealedFile(t, SyncAlways, 20)
	start := foot.Pos &^ 4095
	for cut := start; cut <= foot.End+blockdev.SectorSize; cut += blockdev.SectorSize {
		for _, keepPrefix := range []bool{true, false} {
			img := append([]byte(nil), before...) // preallocated: zeros after the records
			end := min(cut, int64(len(after)))
			if keepPrefix {
				copy(img[start:end], after[start:end])
			} else {
				copy(img[end:], after[end:])
			}
			name := fmt.Sprintf("cut=%d/prefix=%v", cut-start, keepPrefix)
			dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
			rec, err := Recover(dev)
			require.NoError(t, err, name)
			assert.Equal(t, uint64(140), rec.NextOffset, name)
			if rec.Footer == nil {
				_, _, err := ReadSealed(dev)
				assert.Error(t, err, "%s: an unsealed file must not read as sealed", name)
				w, _, err := Open(dev, Options{})
				require.NoError(t, err, "%s: an interrupted seal reopens as an active file", name)
				require.NoError(t, w.Close())
			}
		}
	}
}

func TestSealedFileDamage(t *testing.T) {
	_, img, foot := sealedFile(t, SyncAlways, 20)
	t.Run("garbage after the footer", func(t *testing.T) {
		b := append(append([]byte(nil), img...), make([]byte, 4096)...)
		b[len(b)-1000] = 1
		_, err := Recover(blockdev.NewSimFrom(b, blockdev.SimOptions{}))
		var ce *CorruptionError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, foot.End, ce.Position)
		assert.Contains(t, ce.Reason, "after the footer")
	})
	t.Run("flipped byte in the footer", func(t *testing.T) {
		b := append([]byte(nil), img...)
		b[foot.Pos+FrameHeaderLen+3] ^= 1
		dev := blockdev.NewSimFrom(b, blockdev.SimOptions{})
		_, err := Recover(dev)
		var ce *CorruptionError
		require.ErrorAs(t, err, &ce)
		assert.True(t, ce.InFooter, "the damage is reported as the footer's, so it can be rebuilt")
		assert.Equal(t, foot.Pos, ce.Position)
		_, _, err = ReadSealed(dev)
		require.ErrorAs(t, err, &ce)
		assert.True(t, ce.InFooter)
	})
	t.Run("footer larger than the header's max write", func(t *testing.T) {
		// A peer's file whose footer is bigger than one write of its
		// writer would make the reader allocate it whole.
		b := append([]byte(nil), img...)
		hdr, err := DecodeFileHeader(b)
		require.NoError(t, err)
		hdr.MaxWrite = uint32(foot.End-foot.Pos) - FrameAlign
		EncodeFileHeader(b, hdr)
		_, _, err = ReadSealed(blockdev.NewSimFrom(b, blockdev.SimOptions{}))
		require.ErrorIs(t, err, ErrCorrupt)
		assert.ErrorContains(t, err, "max write")
	})
	t.Run("footer tail pointing elsewhere", func(t *testing.T) {
		b := append([]byte(nil), img...)
		b[len(b)-FooterTailLen] ^= 8
		_, _, err := ReadSealed(blockdev.NewSimFrom(b, blockdev.SimOptions{}))
		assert.ErrorIs(t, err, ErrCorrupt)
	})
}

// TestSealNeverReportsTheFooterAsDurableRecords: OnDurable follows the
// records to their end and stops there: the footer's fdatasync is not
// reported (readers bounded by it would read the footer as records), in
// every sync mode, whether the records were synced before the seal or not.
func TestSealNeverReportsTheFooterAsDurableRecords(t *testing.T) {
	for _, mode := range []SyncMode{SyncAlways, SyncInterval, SyncNever} {
		for _, syncFirst := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/sync-first=%v", mode, syncFirst), func(t *testing.T) {
				var reported [][2]int64
				w, err := Create(newSim(3), 100, Options{SyncMode: mode, MaxWrite: 16 << 10,
					OnDurable: func(pos int64, off uint64) { reported = append(reported, [2]int64{pos, int64(off)}) }})
				require.NoError(t, err)
				for i := range 10 {
					_, err := w.Append(batch(100+uint64(i)*2, 2)...)
					require.NoError(t, err)
				}
				if syncFirst {
					require.NoError(t, w.Sync())
				}
				foot, err := w.Seal(testFooter)
				require.NoError(t, err)
				require.NotEmpty(t, reported)
				last := reported[len(reported)-1]
				assert.Equal(t, [2]int64{foot.Pos, int64(foot.Next)}, last, "the records' end, where the footer starts")
				for i, r := range reported {
					assert.LessOrEqual(t, r[0], foot.Pos, "report %d", i)
					if i > 0 {
						assert.Greater(t, r[0], reported[i-1][0], "report %d advances", i)
					}
				}
			})
		}
	}
}
