package wal

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// reopenBases are the files a reopen starts from: closed cleanly, of an
// older build (no mark), of format versions 1 and 3 (which never get a
// mark), and with a torn tail (an unsynced append torn by a crash), each
// with marks (where the version has them) that move every few flushes.
func reopenBases(t *testing.T) map[string][]byte {
	bases := map[string][]byte{}
	for _, v := range []uint32{0, 1, 3} {
		dev := blockdev.NewSim(blockdev.SimOptions{Seed: 7})
		w, err := Create(dev, 0, Options{Version: v, MaxWrite: 16 << 10, Preallocate: 256 << 10, PreZero: true, highWaterStep: 512})
		require.NoError(t, err)
		for i := 0; i < 12; i++ {
			_, err := w.Append(batch(uint64(i*3), 3)...)
			require.NoError(t, err)
		}
		require.NoError(t, w.Close())
		bases[fmt.Sprint("v", v, " clean")] = dev.Bytes()
		if v == 0 {
			// A version 3 file as a build from before version 4 left it:
			// marked (version 4 only added the mark, so the frames are the
			// same); the next writer must ignore and erase its mark.
			pre := dev.Bytes()
			setVersion(pre, 3, true)
			bases["v3 marked by an older build"] = pre
			none := dev.Bytes()
			clear(none[HighWaterPos : HighWaterPos+HighWaterLen])
			bases["no mark"] = none
			w, _, err := Open(blockdev.NewSimFrom(dev.Bytes(), blockdev.SimOptions{}), Options{})
			require.NoError(t, err)
			require.NoError(t, w.Close())
			tdev := blockdev.NewSimFrom(dev.Bytes(), blockdev.SimOptions{Seed: 9})
			w, trec, err := Open(tdev, Options{SyncMode: SyncNever, highWaterStep: 512})
			require.NoError(t, err)
			_, err = w.Append(testutil.Record(36, 12000))
			require.NoError(t, err)
			require.Eventually(t, func() bool { p, _ := w.Written(); return p > trec.End+12000 }, 10e9, 1e6)
			bases["torn tail"] = tdev.Crash(blockdev.CrashTear)
			w.Close()
			rec, err := Recover(blockdev.NewSimFrom(bases["torn tail"], blockdev.SimOptions{}))
			require.NoError(t, err)
			require.NotNil(t, rec.Torn, "the base must have a torn tail to cut")
		}
	}
	return bases
}

// TestReopenMarkMoveCrashSweep crashes before every write and sync of an
// open (its tail cut, its first mark move) and the durable appends after
// it, for each base file: every acknowledged record survives, recovery
// with the mark finds what a scan of the whole file finds, and the file
// opens and takes appends again.
func TestReopenMarkMoveCrashSweep(t *testing.T) {
	script := func(dev *blockdev.Sim) (acked map[uint64][]byte) {
		acked = map[uint64][]byte{}
		w, rec, err := Open(dev, Options{highWaterStep: 512})
		if err != nil {
			return acked
		}
		defer w.Close()
		next := rec.NextOffset
		for i := 0; i < 16; i++ {
			recs := batch(next, 1+i%4)
			if i%3 == 2 {
				recs = [][]byte{testutil.Record(next, 7000+i)}
			}
			first, err := w.Append(recs...)
			if err != nil {
				return acked
			}
			for j, r := range recs {
				acked[first+uint64(j)] = r
			}
			next += uint64(len(recs))
		}
		return acked
	}
	for name, base := range reopenBases(t) {
		before, _, err := tryReadAll(blockdev.NewSimFrom(base, blockdev.SimOptions{}))
		require.NoError(t, err, name)
		dry := blockdev.NewSimFrom(base, blockdev.SimOptions{})
		script(dry)
		rec, err := Recover(blockdev.NewSimFrom(dry.Bytes(), blockdev.SimOptions{}))
		require.NoError(t, err, name)
		marked := rec.Header.HasHighWater()
		if marked {
			require.Greater(t, rec.HighWater, rec.End, name)
		} else {
			require.Zero(t, rec.HighWater, "%s: a file of version %d never gets a mark", name, rec.Header.Version)
		}
		require.Greater(t, rec.End, int64(3*(16<<10)), "%s: the appends must cross several marks", name)
		if stale, err := decodeHighWater(base[HighWaterPos:], rec.Header.SegmentID); !marked && stale > 0 {
			require.NoError(t, err, name)
			require.Less(t, stale, rec.End, "%s: the appends must go past the older build's mark", name)
		}
		for _, op := range []blockdev.Op{blockdev.OpWrite, blockdev.OpSync} {
			for k := 1; k <= dry.Calls(op)+1; k++ {
				for _, cm := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
					what := fmt.Sprintf("%s: crash at %v #%d, mode %d", name, op, k, cm)
					dev := blockdev.NewSimFrom(base, blockdev.SimOptions{Seed: uint64(k)})
					dev.FailNth(op, k)
					acked := script(dev)
					img := dev.Crash(cm)
					if !marked && !isZero(img[HighWaterPos:DataStart]) {
						// Only the mark an older build left, if the crash
						// came before its erasure was written or synced.
						require.Equal(t, base[HighWaterPos:DataStart], img[HighWaterPos:DataStart], "%s: a mark in a file of version %d", what, rec.Header.Version)
					}
					rec := sameRecovery(t, img, what)
					require.NotNil(t, rec, what)
					got, _ := readAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))
					for off, want := range before {
						if name != "torn tail" || off < 36 {
							require.Equal(t, want, got[off], "%s: record %d of the base file", what, off)
						}
					}
					for off, want := range acked {
						require.Equal(t, want, got[off], "%s: acknowledged record %d", what, off)
					}
					dev = blockdev.NewSimFrom(img, blockdev.SimOptions{})
					w, _, err := Open(dev, Options{highWaterStep: 512})
					require.NoError(t, err, what)
					_, err = w.Append(batch(rec.NextOffset, 2)...)
					require.NoError(t, err, what)
					require.NoError(t, w.Close(), what)
					sameRecovery(t, dev.Bytes(), what+", reopened and appended")
				}
			}
		}
	}
}
