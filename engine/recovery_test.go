package engine

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// fourSegments builds a log of three sealed segments of 30 records and an
// active one of 30, then closes it.
func fourSegments(t *testing.T) (*blockdev.SimDir, []uint64) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	var bases []uint64
	for i := 0; i < 4; i++ {
		bases = append(bases, l.EndOffset())
		for j := 0; j < 10; j++ {
			_, err := l.Append(batchOf3(l.EndOffset())...)
			require.NoError(t, err)
		}
		if i < 3 {
			require.NoError(t, l.Roll())
		}
	}
	require.NoError(t, l.Close())
	return dir, bases
}

func batchOf3(first uint64) [][]byte {
	return [][]byte{[]byte(fmt.Sprint("r", first)), []byte(fmt.Sprint("r", first+1)), []byte(fmt.Sprint("r", first+2))}
}

func requireAll(t *testing.T, l *Log, n uint64) {
	t.Helper()
	require.Equal(t, n, l.EndOffset())
	for o := uint64(0); o < n; o++ {
		got, err := l.Read(o, nil)
		require.NoError(t, err, "offset %d", o)
		require.Equal(t, fmt.Sprint("r", o), string(got))
	}
}

// footerPos is the position of the footer of the sealed segment on dev.
func footerPos(t *testing.T, dev blockdev.Device) int64 {
	t.Helper()
	_, f, err := wal.ReadSealed(dev)
	require.NoError(t, err)
	return f.Pos
}

func TestSegmentRecoveryTable(t *testing.T) {
	tests := []struct {
		name    string
		damage  func(t *testing.T, dir *blockdev.SimDir, seg *blockdev.Sim)
		wantErr string // "" when Open must succeed with every record
		check   func(t *testing.T, rec Recovery, base uint64)
	}{
		{"damaged footer is rebuilt and reported", func(t *testing.T, dir *blockdev.SimDir, seg *blockdev.Sim) {
			seg.FlipBit(footerPos(t, seg)+wal.FrameHeaderLen+40, 2)
			require.NoError(t, dir.Remove(manifestName)) // else found at first use: TestLazyDamagedFooter
		}, "", func(t *testing.T, rec Recovery, base uint64) {
			assert.Equal(t, []uint64{base}, rec.RebuiltFooters)
		}},
		{"unsealed middle segment (crash before its seal) is sealed", func(t *testing.T, _ *blockdev.SimDir, seg *blockdev.Sim) {
			size, _ := seg.Size()
			require.NoError(t, wal.Cut(seg, footerPos(t, seg), size))
		}, "", func(t *testing.T, rec Recovery, base uint64) {
			assert.Equal(t, []uint64{base}, rec.Resealed)
		}},
		{"interrupted creation of the next segment", func(t *testing.T, dir *blockdev.SimDir, _ *blockdev.Sim) {
			// A crash during Roll: the new file exists, its header never synced.
			dev, err := dir.Open(segName(120), blockdev.Options{Create: true})
			require.NoError(t, err)
			_, err = dev.WriteAt(dev.Alignment().Alloc(4096), 0)
			require.NoError(t, err)
		}, "", func(t *testing.T, rec Recovery, _ uint64) {
			assert.Equal(t, []uint64{120}, rec.RemovedIncomplete)
		}},
		{"headerless last file holding data", func(t *testing.T, _ *blockdev.SimDir, seg *blockdev.Sim) {
			require.NoError(t, wal.Cut(seg, 0, wal.DataStart)) // the header block zeroed; frames remain
		}, "no header", nil},
		{"missing segment in the middle", func(t *testing.T, dir *blockdev.SimDir, _ *blockdev.Sim) {
			require.NoError(t, dir.Remove(segName(30)))
		}, "a segment is missing", nil},
		{"truncated sealed file", func(t *testing.T, _ *blockdev.SimDir, seg *blockdev.Sim) {
			sc, err := wal.NewScanner(seg) // cut after the first frame
			require.NoError(t, err)
			require.True(t, sc.Next())
			require.NoError(t, seg.Truncate(sc.Frame().End()))
		}, "records are missing (file left untouched)", nil},
		{"garbage after the footer", func(t *testing.T, _ *blockdev.SimDir, seg *blockdev.Sim) {
			size, _ := seg.Size()
			junk := seg.Alignment().Alloc(512)
			junk[7] = 0xee
			_, err := seg.WriteAt(junk, (size+511)&^511)
			require.NoError(t, err)
		}, "after the footer", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir, bases := fourSegments(t)
			seg := dir.File(segName(bases[1]))
			if tc.name == "interrupted creation of the next segment" || tc.name == "headerless last file holding data" {
				seg = dir.File(segName(bases[3]))
			}
			tc.damage(t, dir, seg)
			before := seg.Bytes()
			l, err := Open("sim", testOptions(dir))
			if tc.wantErr != "" {
				require.Error(t, err)
				assert.ErrorContains(t, err, tc.wantErr)
				assert.Equal(t, before, seg.Bytes(), "a refused open must not modify the damaged file")
				return
			}
			require.NoError(t, err)
			tc.check(t, l.Stats().LastOpenRecovery, bases[1])
			requireAll(t, l, 120)
			require.NoError(t, l.Close())
			// The repair is durable: the next open finds four sound segments.
			l, err = Open("sim", testOptions(dir))
			require.NoError(t, err)
			rec := l.Stats().LastOpenRecovery
			assert.Empty(t, rec.RebuiltFooters)
			assert.Empty(t, rec.Resealed)
			assert.Empty(t, rec.RemovedIncomplete)
			assert.Equal(t, len(l.Segments())-1, rec.Sealed+rec.Deferred, "every segment but the active one is sealed")
			requireAll(t, l, 120)
			require.NoError(t, l.Close())
		})
	}
}

// TestInterruptedTruncateBack crashes TruncateBack at each step: with the
// rewrite of the segment holding from written but not renamed, renamed but
// the directory not synced, and committed. Before the commit point the log
// must be a prefix of the old one (every record below from intact); after
// it, it ends at from. No .tmp file survives an open.
func TestInterruptedTruncateBack(t *testing.T) {
	const from = 44 // inside a batch of segment 1 (records 30..59)
	for _, step := range []string{"written", "renamed", "committed"} {
		for _, mode := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
			t.Run(fmt.Sprintf("%s/mode=%d", step, mode), func(t *testing.T) {
				dir, _ := fourSegments(t)
				l, err := Open("sim", testOptions(dir))
				require.NoError(t, err)
				segs := *l.segs.Load()
				require.NoError(t, l.dropLocked(reverse(segs[2:]), segs[:2]))
				tmp, err := l.writePrefix(segs[1], from)
				require.NoError(t, err)
				if step != "written" {
					require.NoError(t, dir.Rename(tmp, segs[1].name))
				}
				if step == "committed" {
					require.NoError(t, dir.Sync())
				}
				crashed := dir.Crash(mode)
				l.Close()

				l, err = Open("sim", testOptions(crashed))
				require.NoError(t, err)
				defer l.Close()
				end := l.EndOffset()
				if step == "committed" {
					assert.Equal(t, uint64(from), end)
				} else {
					assert.GreaterOrEqual(t, end, uint64(from), "before the commit point nothing below from is lost")
				}
				requireAll(t, l, end)
				names, _ := crashed.List()
				for _, n := range names {
					assert.NotContains(t, n, segSuffix+tmpSuffix, "the uncommitted rewrite is discarded")
				}
				first, err := l.Append([]byte("next"))
				require.NoError(t, err)
				assert.Equal(t, end, first)
			})
		}
	}
}

// TestLazyDamagedFooter: a sealed segment trusted through the manifest
// whose footer is damaged is found at its first read, served from an index
// rebuilt from its records, reported (RebuiltFootersSinceOpen), and
// dropped from the manifest, so the next open rebuilds the footer on disk.
func TestLazyDamagedFooter(t *testing.T) {
	dir, bases := fourSegments(t)
	seg := dir.File(segName(bases[1]))
	seg.FlipBit(footerPos(t, seg)+wal.FrameHeaderLen+40, 2)

	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	rec := l.Stats().LastOpenRecovery
	assert.Equal(t, 3, rec.Deferred, "the three sealed segments are trusted through the manifest")
	assert.Empty(t, rec.RebuiltFooters)
	requireAll(t, l, 120)
	assert.Equal(t, []uint64{bases[1]}, l.Stats().RebuiltFootersSinceOpen)
	assert.Equal(t, rec, l.Stats().LastOpenRecovery, "what Open did")
	require.NoError(t, l.Close())

	l, err = Open("sim", testOptions(dir))
	require.NoError(t, err)
	rec = l.Stats().LastOpenRecovery
	assert.Equal(t, []uint64{bases[1]}, rec.RebuiltFooters, "opened eagerly and rebuilt on disk")
	requireAll(t, l, 120)
	require.NoError(t, l.Close())

	l, err = Open("sim", testOptions(dir))
	require.NoError(t, err)
	rec = l.Stats().LastOpenRecovery
	assert.Empty(t, rec.RebuiltFooters)
	assert.Equal(t, 3, rec.Deferred)
	requireAll(t, l, 120)
	require.NoError(t, l.Close())
}

// TestManifestDisagreesWithFile: a sealed file that was replaced after the
// manifest described it (same name and size, different footer) is refused
// at its first read with a corruption error naming it; nothing from it is
// returned.
func TestManifestDisagreesWithFile(t *testing.T) {
	dir, bases := fourSegments(t)
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	require.NoError(t, l.Close())
	// Re-encode the manifest with segment 1's checksum changed.
	b, err := readMeta(dir, manifestName, metaManifest)
	require.NoError(t, err)
	m, _, err := decodeManifest(b)
	require.NoError(t, err)
	var entries []manifestEntry
	for _, e := range m {
		if e.base == bases[1] {
			e.crc ^= 1
		}
		entries = append(entries, e)
	}
	require.NoError(t, writeMeta(dir, manifestName, metaManifest, encodeManifest(entries, nil), true))

	l, err = Open("sim", testOptions(dir))
	require.NoError(t, err)
	defer l.Close()
	_, err = l.Read(bases[1], nil)
	require.ErrorIs(t, err, ErrCorrupt)
	assert.ErrorContains(t, err, "disagrees with the manifest")
	assert.ErrorContains(t, err, segName(bases[1]))
	got, err := l.Read(bases[2], nil)
	require.NoError(t, err, "the other segments stay readable")
	assert.Equal(t, fmt.Sprint("r", bases[2]), string(got))
}

// TestCleanCloseSkipsTheTailProof: after a clean Close the next open
// trusts where the last segment ends (CleanEnd) and the first append
// removes that record before writing, so a crash later is recovered with
// the full proof.
func TestCleanCloseSkipsTheTailProof(t *testing.T) {
	dir, _ := fourSegments(t) // closed cleanly
	l, err := Open("sim", testOptions(dir))
	require.NoError(t, err)
	assert.True(t, l.Stats().LastOpenRecovery.CleanEnd)
	requireAll(t, l, 120)
	_, clean, _ := l.readManifest()
	assert.NotNil(t, clean, "nothing written yet: the record stands")
	for i := uint64(120); i < 150; i += 3 {
		_, err := l.Append(batchOf3(i)...)
		require.NoError(t, err)
		_, clean, _ := l.readManifest()
		assert.True(t, clean == nil, "the record is gone before anything is written")
	}
	crashed := dir.Crash(blockdev.CrashTear)
	l.Close()

	l, err = Open("sim", testOptions(crashed))
	require.NoError(t, err)
	assert.False(t, l.Stats().LastOpenRecovery.CleanEnd, "no clean close since")
	requireAll(t, l, 150)
	require.NoError(t, l.Close())
}
