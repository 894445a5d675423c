package wal

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// setVersion rewrites the version field of the file header in img, and the
// header's checksum if fix is set.
func setVersion(img []byte, v uint32, fix bool) {
	binary.LittleEndian.PutUint32(img[8:12], v)
	if fix {
		binary.LittleEndian.PutUint32(img[60:64], crc32.Checksum(img[:60], castagnoli))
	}
}

// markedImage is a closed file of the current version whose appends moved
// its high-water mark many times.
func markedImage(t *testing.T, v uint32) []byte {
	t.Helper()
	dev := blockdev.NewSim(blockdev.SimOptions{})
	w, err := Create(dev, 0, Options{Version: v, MaxWrite: 16 << 10, Preallocate: 256 << 10, PreZero: true, highWaterStep: 512})
	require.NoError(t, err)
	for i := 0; i < 30; i++ {
		_, err := w.Append(batch(uint64(i*4), 4)...)
		require.NoError(t, err)
	}
	require.NoError(t, w.Close())
	return dev.Bytes()
}

// TestMarksOnlyInVersionsThatHaveThem: a file of each version is created,
// appended to across many would-be moves of the mark, closed, reopened and
// appended to again: only a file of HighWaterVersion or later ever holds
// a mark, and recovery of each finds what a scan of the whole file finds.
func TestMarksOnlyInVersionsThatHaveThem(t *testing.T) {
	for v := uint32(MinVersion); v <= Version; v++ {
		t.Run(fmt.Sprint("v", v), func(t *testing.T) {
			img := markedImage(t, v)
			marked := !isZero(img[HighWaterPos:DataStart])
			require.Equal(t, v >= HighWaterVersion, marked)
			rec := sameRecovery(t, img, "closed")
			require.NotNil(t, rec)
			require.Equal(t, v, rec.Header.Version)
			require.Equal(t, v >= HighWaterVersion, rec.HighWater > 0)

			dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
			w, rec, err := Open(dev, Options{highWaterStep: 512})
			require.NoError(t, err)
			for i := 0; i < 10; i++ {
				_, err := w.Append(batch(rec.NextOffset+uint64(i*3), 3)...)
				require.NoError(t, err)
			}
			if v < HighWaterVersion {
				require.Zero(t, w.Stats().MarkWrites)
			} else {
				require.Positive(t, w.Stats().MarkWrites)
			}
			require.NoError(t, w.Close())
			require.Equal(t, v >= HighWaterVersion, !isZero(dev.Bytes()[HighWaterPos:DataStart]))
			rec = sameRecovery(t, dev.Bytes(), "reopened")
			require.Equal(t, v, rec.Header.Version, "a file keeps its version")
		})
	}
}

// TestVersionFieldFlip: the version field of a marked file set to 3, or of
// an unmarked version 3 file set to 4. Flipped alone, the header checksum
// fails: corruption of the file header at position 0. Flipped with the
// checksum fixed (the only way to get either file without damage: a
// version 3 file marked by a build from before version 4, or a rewrite by
// hand), both are harmless: the marked version 3 file is recovered by a
// scan of the whole file, its mark ignored, and erased by the next writer;
// the unmarked version 4 file has no mark, is recovered by reading the
// rest, and gets one from the next writer.
func TestVersionFieldFlip(t *testing.T) {
	for _, c := range []struct {
		name     string
		from, to uint32
	}{{"marked 4 as 3", 4, 3}, {"unmarked 3 as 4", 3, 4}} {
		t.Run(c.name, func(t *testing.T) {
			img := markedImage(t, c.from)
			require.Equal(t, c.from >= HighWaterVersion, !isZero(img[HighWaterPos:DataStart]))
			want, _ := readAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))

			bad := append([]byte(nil), img...)
			setVersion(bad, c.to, false)
			_, err := Recover(blockdev.NewSimFrom(bad, blockdev.SimOptions{}))
			var ce *CorruptionError
			require.ErrorAs(t, err, &ce)
			require.Zero(t, ce.Position)
			require.ErrorIs(t, err, ErrCorrupt)

			flipped := append([]byte(nil), img...)
			setVersion(flipped, c.to, true)
			rec := sameRecovery(t, flipped, c.name)
			require.NotNil(t, rec)
			require.Equal(t, c.to, rec.Header.Version)
			require.Zero(t, rec.HighWater, "neither file has a mark recovery may use")
			rec, err = Recover(blockdev.NewSimFrom(flipped, blockdev.SimOptions{}))
			require.NoError(t, err)
			require.GreaterOrEqual(t, rec.BytesRead, int64(len(flipped)), "no mark: recovery reads the whole file")
			got, _ := readAll(t, blockdev.NewSimFrom(flipped, blockdev.SimOptions{}))
			require.Equal(t, want, got)

			dev := blockdev.NewSimFrom(flipped, blockdev.SimOptions{})
			w, rec, err := Open(dev, Options{highWaterStep: 512})
			require.NoError(t, err)
			_, err = w.Append(batch(rec.NextOffset, 3)...)
			require.NoError(t, err)
			require.NoError(t, w.Close())
			require.Equal(t, c.to >= HighWaterVersion, !isZero(dev.Bytes()[HighWaterPos:DataStart]),
				"the writer marks a version 4 file and erases the mark of a version 3 one")
			sameRecovery(t, dev.Bytes(), c.name+", reopened")
		})
	}
}

// TestNewerVersionRefused: a file of a version this build does not know is
// refused with ErrVersion, by the header decoder, the scanner and Open,
// with a message that says which build reads it, and is left unchanged.
func TestNewerVersionRefused(t *testing.T) {
	img := markedImage(t, 0)
	setVersion(img, Version+1, true)
	orig := append([]byte(nil), img...)
	_, err := DecodeFileHeader(img)
	require.ErrorIs(t, err, ErrVersion)
	require.ErrorContains(t, err, fmt.Sprintf("file has version %d, this build reads %d to %d: upgrade segstore to a build that reads format version %d", Version+1, MinVersion, Version, Version+1))
	_, err = Recover(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	require.ErrorIs(t, err, ErrVersion)
	dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
	_, _, err = Open(dev, Options{})
	require.ErrorIs(t, err, ErrVersion)
	require.Equal(t, orig, dev.Bytes())
}

// TestEveryBitFlipOfTheMark flips every bit of the high-water mark's bytes
// (and the zeros after them, to the end of its 32 bytes), one at a time,
// in a file of each version, and in a version 3 file marked by a build
// from before version 4: each flip is reported as corruption at or before
// the flipped byte (never taken for a bound, a torn tail, or a file with
// fewer records), and the file is left as it was by Open.
func TestEveryBitFlipOfTheMark(t *testing.T) {
	files := map[string][]byte{}
	for v := uint32(MinVersion); v <= Version; v++ {
		files[fmt.Sprint("v", v)] = markedImage(t, v)
	}
	pre := markedImage(t, 4)
	setVersion(pre, 3, true)
	files["v3 marked by an older build"] = pre
	for name, image := range files {
		t.Run(name, func(t *testing.T) {
			records, rec := readAll(t, blockdev.NewSimFrom(image, blockdev.SimOptions{}))
			require.NotEmpty(t, records)
			img := make([]byte, len(image))
			for pos := int64(HighWaterPos); pos < HighWaterPos+32; pos++ {
				for bit := uint(0); bit < 8; bit++ {
					copy(img, image)
					img[pos] ^= 1 << bit
					checkFlip(t, img, pos, rec.End, records)
					dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
					_, _, err := Open(dev, Options{highWaterStep: 512})
					require.ErrorIs(t, err, ErrCorrupt, "%s: byte %d bit %d", name, pos, bit)
					require.Equal(t, img, dev.Bytes(), "%s: byte %d bit %d: Open changed a damaged file", name, pos, bit)
				}
			}
		})
	}
}
