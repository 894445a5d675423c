package wal

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// readCounter counts the bytes read from a device.
type readCounter struct {
	blockdev.Device
	bytes atomic.Int64
}

func (c *readCounter) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.Device.ReadAt(p, off)
	c.bytes.Add(int64(n))
	return n, err
}

// recoverAll scans dev as Recover does, but reads the whole file for the
// proof of its end (ReadAll): what recovery found before the high-water
// mark existed.
func recoverAll(t *testing.T, dev blockdev.Device) (*Recovery, error) {
	t.Helper()
	s, err := NewScanner(dev)
	if err != nil {
		return nil, err
	}
	s.ReadAll()
	for s.Next() {
	}
	return s.Recovery(), s.Err()
}

// sameRecovery requires that recovery with the high-water mark found what
// a scan of the whole file finds.
func sameRecovery(t *testing.T, img []byte, what string) *Recovery {
	t.Helper()
	rec, err := Recover(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	all, allErr := recoverAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	if allErr != nil {
		require.Error(t, err, "%s: the mark hid what makes the file corrupt (%v)", what, allErr)
		require.Equal(t, allErr.Error(), err.Error(), what)
		return nil
	}
	require.NoError(t, err, what)
	rec.BytesRead, all.BytesRead = 0, 0
	require.Equal(t, all, rec, "%s: recovery with the mark differs from a scan of the whole file", what)
	return rec
}

// TestHighWaterBoundsRecoveryReads: the open after a crash of a 64 MiB
// pre-zeroed file holding 1 MiB of frames reads at most the frames, the
// header block, MaxWrite and HighWaterStep (where a scan of the whole file
// reads 64 MiB). With a torn write in flight the writer may have written
// MaxWrite past the frames, and the classification of the tear reads the
// damaged region and MaxWrite after it again: at most 3 MaxWrite more.
// (Plus the header block, block alignment and the frames that straddle the
// scanner's 1 MiB reads, which it reads again: 64 KiB here.)
func TestHighWaterBoundsRecoveryReads(t *testing.T) {
	for _, torn := range []bool{false, true} {
		t.Run(fmt.Sprint("torn=", torn), func(t *testing.T) {
			const size = 64 << 20
			dev := blockdev.NewSim(blockdev.SimOptions{Seed: 3})
			opts := Options{Preallocate: size, PreZero: true}
			w, err := Create(dev, 0, opts)
			require.NoError(t, err)
			recs := make([][]byte, 16)
			for i := range recs {
				recs[i] = make([]byte, 4000)
				recs[i][0] = byte(i + 1)
			}
			for w.Stats().FrameBytes < 1<<20 {
				_, err := w.Append(recs...)
				require.NoError(t, err)
			}
			mode := blockdev.CrashDropUnsynced
			if torn {
				// One more frame, written and not synced, torn by the crash.
				require.NoError(t, w.Close())
				w, _, err = Open(dev, Options{SyncMode: SyncNever})
				require.NoError(t, err)
				big := [][]byte{make([]byte, 3<<20)}
				for i := range big[0] {
					big[0][i] = byte(i%251 + 1)
				}
				_, err = w.Append(big...)
				require.NoError(t, err)
				require.Eventually(t, func() bool { p, _ := w.Written(); return p > 2<<20 }, 10e9, 1e6)
				mode = blockdev.CrashKeepAll
			}
			img := dev.Crash(mode)
			w.Close()
			if torn { // a sector in the middle of the unsynced frame did not land
				clear(img[2<<20 : 2<<20+blockdev.SectorSize])
			}

			c := &readCounter{Device: blockdev.NewSimFrom(img, blockdev.SimOptions{})}
			rec, err := Recover(c)
			require.NoError(t, err)
			require.Equal(t, c.bytes.Load(), rec.BytesRead, "Recovery.BytesRead counts every read")
			bound := rec.End + DefaultMaxWrite + HighWaterStep + 64<<10
			if torn {
				bound += 3 * DefaultMaxWrite
			}
			require.LessOrEqual(t, rec.BytesRead, bound, "the proof of the end stops at the high-water mark %d", rec.HighWater)
			require.Equal(t, torn, rec.Torn != nil)
			all, err := recoverAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))
			require.NoError(t, err)
			require.GreaterOrEqual(t, all.BytesRead, int64(size), "without the mark the whole file is read")
			t.Logf("frames end at %d; recovery read %d bytes (bound %d), the whole-file scan %d", rec.End, rec.BytesRead, bound, all.BytesRead)
		})
	}
}

// highWaterScript appends batches of varied sizes to a small file whose
// marks move often (a 512-byte step), for the crash sweep. It returns the
// records acknowledged as durable (in SyncAlways mode) and stops at the
// first error. v is the file's format version (0: the current one).
func highWaterScript(dev *blockdev.Sim, mode SyncMode, v uint32) (acked map[uint64][]byte, w *Writer, err error) {
	records := uint64(120)
	if testutil.Long() {
		records = 400
	}
	acked = map[uint64][]byte{}
	opts := Options{SyncMode: mode, MaxWrite: 16 << 10, Preallocate: 256 << 10, PreZero: true, highWaterStep: 512, Version: v}
	w, err = Create(dev, 0, opts)
	if err != nil {
		return acked, nil, err
	}
	next := uint64(0)
	for i := 0; next < records; i++ {
		recs := batch(next, 1+i%7)
		if i%5 == 4 {
			recs = [][]byte{testutil.Record(next, 9000+i)} // a frame of several blocks
		}
		first, err := w.Append(recs...)
		if err != nil {
			return acked, w, err
		}
		if mode == SyncAlways {
			for j, r := range recs {
				acked[first+uint64(j)] = r
			}
		}
		next += uint64(len(recs))
	}
	return acked, w, w.Close()
}

// TestHighWaterCrashSweep crashes a writer whose high-water mark moves
// every few flushes before each of its device writes and syncs (so right
// before and right after every move of the mark, and before and after the
// fdatasync that makes it durable), losing, tearing or keeping what was not
// synced. After each: recovery succeeds, every acknowledged record is
// there, recovery finds exactly what a scan of the whole file finds (the
// mark never hides a frame or damage), and the file takes appends again.
// A version 3 file, the same appends and crashes: it never gets a mark (a
// version 3 build would read one as damage), and its recovery is the scan
// of the whole file.
func TestHighWaterCrashSweep(t *testing.T) {
	for _, c := range []struct {
		mode SyncMode
		v    uint32
	}{{SyncAlways, 0}, {SyncNever, 0}, {SyncAlways, 3}, {SyncNever, 3}} {
		mode, v := c.mode, c.v
		dry := blockdev.NewSim(blockdev.SimOptions{})
		_, w, err := highWaterScript(dry, mode, v)
		require.NoError(t, err)
		if v == 0 {
			require.Greater(t, w.Stats().MarkWrites, int64(5), "the sweep must cross many marks")
		} else {
			require.Zero(t, w.Stats().MarkWrites, "version %d: no marks", v)
		}
		calls := map[blockdev.Op]int{blockdev.OpWrite: dry.Calls(blockdev.OpWrite), blockdev.OpSync: dry.Calls(blockdev.OpSync)}
		crashes := []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll}
		if testutil.Long() {
			crashes = append(crashes, blockdev.CrashTear, blockdev.CrashTear)
		}
		runs := 0
		for op, n := range calls {
			for k := 1; k <= n+1; k++ {
				for ci, cm := range crashes {
					what := fmt.Sprintf("%v, version %d, crash before %v #%d, mode %d/%d", mode, v, op, k, cm, ci)
					dev := blockdev.NewSim(blockdev.SimOptions{Seed: uint64(k*10 + ci)})
					dev.FailNth(op, k)
					acked, w, _ := highWaterScript(dev, mode, v)
					img := dev.Crash(cm)
					if v != 0 && len(img) >= DataStart {
						require.True(t, isZero(img[HighWaterPos:DataStart]), "%s: a mark in a version %d file", what, v)
					}
					if w == nil { // Create failed: the file never existed
						_, err := Recover(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
						if errors.Is(err, ErrNotWAL) {
							continue
						}
					} else {
						w.Close()
					}
					rec := sameRecovery(t, img, what)
					require.NotNil(t, rec, what)
					got, _ := readAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))
					for off, want := range acked {
						require.Equal(t, want, got[off], "%s: acknowledged record %d", what, off)
					}
					for off, r := range got {
						require.Equal(t, testutil.Record(off, len(r)), r, "%s: record %d", what, off)
					}
					dev = blockdev.NewSimFrom(img, blockdev.SimOptions{})
					w2, _, err := Open(dev, Options{highWaterStep: 512})
					require.NoError(t, err, what)
					_, err = w2.Append(batch(rec.NextOffset, 3)...)
					require.NoError(t, err, what)
					require.NoError(t, w2.Close(), what)
					if v != 0 {
						require.True(t, isZero(dev.Bytes()[HighWaterPos:DataStart]), "%s: reopened: a mark in a version %d file", what, v)
					}
					sameRecovery(t, dev.Bytes(), what+", reopened and appended")
					runs++
				}
			}
		}
		t.Logf("%v, version %d: %d crashes (%v calls)", mode, v, runs, calls)
	}
}

// TestAppendsCrossingMarksCostNoExtraSync: in SyncAlways mode every
// append costs one fdatasync, whether or not its flush moves the mark.
func TestAppendsCrossingMarksCostNoExtraSync(t *testing.T) {
	dev := blockdev.NewSim(blockdev.SimOptions{})
	w, err := Create(dev, 0, Options{MaxWrite: 16 << 10, Preallocate: 512 << 10, PreZero: true, highWaterStep: 512})
	require.NoError(t, err)
	for i := 0; i < 200; i++ {
		before, marks := dev.Calls(blockdev.OpSync), w.Stats().MarkWrites
		recs := batch(uint64(i*3), 3)
		if i%4 == 0 {
			recs = [][]byte{testutil.Record(uint64(i*3), 9000), testutil.Record(uint64(i*3+1), 10), testutil.Record(uint64(i*3+2), 10)}
		}
		_, err := w.Append(recs...)
		require.NoError(t, err)
		require.Equal(t, 1, dev.Calls(blockdev.OpSync)-before, "append %d (marks written: %d)", i, w.Stats().MarkWrites-marks)
	}
	require.Greater(t, w.Stats().MarkWrites, int64(50))
	require.Equal(t, int64(200), w.Stats().Syncs)
	require.NoError(t, w.Close())
}

// TestHighWaterMarkDamage: no mark (a file of an older build) makes
// recovery read the whole file; a damaged mark is corruption at its
// position (a crash leaves it whole); data past a mark is not read by
// recovery and is found by a ReadAll scan.
func TestHighWaterMarkDamage(t *testing.T) {
	dev := blockdev.NewSim(blockdev.SimOptions{})
	w, err := Create(dev, 0, Options{MaxWrite: 16 << 10, Preallocate: 1 << 20, PreZero: true, highWaterStep: 512})
	require.NoError(t, err)
	_, err = w.Append(batch(0, 5)...)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	img := dev.Bytes()
	rec, err := Recover(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	require.NoError(t, err)
	require.Less(t, rec.HighWater, int64(64<<10))
	require.Less(t, rec.BytesRead, int64(64<<10))

	none := append([]byte(nil), img...)
	clear(none[HighWaterPos : HighWaterPos+HighWaterLen])
	rec, err = Recover(blockdev.NewSimFrom(none, blockdev.SimOptions{}))
	require.NoError(t, err)
	require.Zero(t, rec.HighWater)
	require.GreaterOrEqual(t, rec.BytesRead, int64(1<<20))

	for i := 0; i < HighWaterLen*8; i++ {
		bad := append([]byte(nil), img...)
		bad[HighWaterPos+i/8] ^= 1 << (i % 8)
		_, err := Recover(blockdev.NewSimFrom(bad, blockdev.SimOptions{}))
		var ce *CorruptionError
		require.ErrorAs(t, err, &ce, "bit %d", i)
		require.Equal(t, int64(HighWaterPos), ce.Position)
	}

	stray := append([]byte(nil), img...)
	stray[900<<10] = 1
	_, err = Recover(blockdev.NewSimFrom(stray, blockdev.SimOptions{}))
	require.NoError(t, err, "recovery does not read past the mark")
	_, err = recoverAll(t, blockdev.NewSimFrom(stray, blockdev.SimOptions{}))
	require.ErrorIs(t, err, ErrCorrupt, "a ReadAll scan (verify) finds data past the mark")
}
