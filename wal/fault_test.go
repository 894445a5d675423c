package wal

import (
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// TestInjectedErrorsAreSticky fails the device's next write or sync while
// many appenders wait on one flush: every waiter must get the error, the
// writer must refuse everything after it, and nothing it refused may be
// claimed durable.
func TestInjectedErrorsAreSticky(t *testing.T) {
	for _, op := range []blockdev.Op{blockdev.OpWrite, blockdev.OpSync} {
		t.Run(op.String(), func(t *testing.T) {
			dev := blockdev.NewSim(blockdev.SimOptions{SyncLatency: time.Millisecond})
			w, err := Create(dev, 0, Options{})
			require.NoError(t, err)
			_, err = w.Append([]byte("before"))
			require.NoError(t, err)
			durablePos, durableOff := w.Durable()
			dev.FailNth(op, dev.Calls(op)+1)

			const appenders = 16
			errs := make([]error, appenders)
			var wg sync.WaitGroup
			for a := 0; a < appenders; a++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[a] = w.Append([]byte{byte(a)})
				}()
			}
			wg.Wait()
			failed := 0
			for _, err := range errs {
				if err != nil {
					failed++
					assert.ErrorIs(t, err, ErrFailed)
					assert.ErrorIs(t, err, syscall.EIO, "the cause must be kept")
					assert.ErrorIs(t, err, blockdev.ErrInjected)
				}
			}
			assert.Positive(t, failed, "at least the appenders of the failed flush see the error")
			assert.Equal(t, 1, map[blockdev.Op]int{
				blockdev.OpWrite: dev.Injected().WriteErrors,
				blockdev.OpSync:  dev.Injected().SyncErrors,
			}[op], "exactly the injected fault happened")

			// Sticky: no more appends, no more syncs, and fsync is not retried.
			syncsBefore := dev.Calls(blockdev.OpSync)
			_, err = w.Append([]byte("after"))
			assert.ErrorIs(t, err, ErrFailed)
			assert.ErrorIs(t, w.Sync(), ErrFailed)
			assert.ErrorIs(t, w.Close(), ErrFailed)
			assert.Equal(t, syncsBefore, dev.Calls(blockdev.OpSync), "a failed writer must not call fsync again")
			assert.ErrorIs(t, w.Err(), syscall.EIO)
			pos, off := w.Durable()
			if failed == appenders {
				assert.Equal(t, durablePos, pos)
				assert.Equal(t, durableOff, off)
			}

			// Whatever survives a crash now, recovery is clean and holds
			// "before" plus only records whose append succeeded or was lost.
			img := dev.Crash(blockdev.CrashTear)
			got, _ := readAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))
			assert.Equal(t, []byte("before"), got[0])
			for a, err := range errs {
				if err == nil {
					found := false
					for _, r := range got {
						found = found || (len(r) == 1 && r[0] == byte(a))
					}
					assert.True(t, found, "appender %d was acknowledged, its record must survive", a)
				}
			}
		})
	}
}

// TestReadErrorDuringRecovery: an EIO while recovery reads is an I/O
// error (not corruption) and names the file and position.
func TestReadErrorDuringRecovery(t *testing.T) {
	tf := buildFile(t, 5, 0)
	dev := blockdev.NewSimFrom(tf.image, blockdev.SimOptions{})
	dev.FailNth(blockdev.OpRead, 2)
	_, _, err := Open(dev, Options{})
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.EIO)
	assert.NotErrorIs(t, err, ErrCorrupt, "an I/O error is not corruption")
	assert.Contains(t, err.Error(), dev.Name())
}

// TestFailNthSweep injects EIO at every device write and sync of a fixed
// workload in turn; each run must fail cleanly (sticky) and recover to a
// valid log holding every acknowledged record.
func TestFailNthSweep(t *testing.T) {
	for _, op := range []blockdev.Op{blockdev.OpWrite, blockdev.OpSync} {
		for n := 1; n <= 30; n++ {
			dev := blockdev.NewSim(blockdev.SimOptions{Seed: uint64(n)})
			dev.FailNth(op, n)
			w, err := Create(dev, 0, Options{MaxWrite: 16 << 10})
			if err != nil {
				assert.ErrorIs(t, err, syscall.EIO, "%s #%d during create", op, n)
				continue
			}
			var acked uint64
			for i := 0; i < 20; i++ {
				first, err := w.Append(batch(acked, 3)...)
				if err != nil {
					assert.ErrorIs(t, err, ErrFailed)
					break
				}
				require.Equal(t, acked, first)
				acked += 3
			}
			w.Close()
			img := dev.Crash(blockdev.CrashTear)
			got, _ := readAll(t, blockdev.NewSimFrom(img, blockdev.SimOptions{}))
			for o := uint64(0); o < acked; o++ {
				require.Equal(t, testutil.Record(o, recordSize(o)), got[o], "%s #%d: acknowledged record %d", op, n, o)
			}
		}
	}
}

// TestMediaFaultsThroughTheWriter: faults injected by the device under a
// live writer (a misdirected write landing on synced frames, a bit flipped
// in synced data) are reported as corruption at the damaged frame on the
// next open, never cut as a torn tail and never returned as data.
func TestMediaFaultsThroughTheWriter(t *testing.T) {
	write := func(t *testing.T, dev *blockdev.Sim, n int) {
		w, err := Create(dev, 0, Options{MaxWrite: 16 << 10})
		require.NoError(t, err)
		for i := 0; i < n; i++ {
			_, err := w.Append(batch(uint64(i)*2, 2)...)
			require.NoError(t, err)
		}
		require.NoError(t, w.Close())
	}
	t.Run("misdirected write", func(t *testing.T) {
		dev := newSim(9)
		// Writes: 1 header; appends then write 4 KiB blocks from position
		// 4096 on. Send the 40th write 8 KiB back, over synced frames.
		dev.MisdirectNth(40, -8192)
		write(t, dev, 60)
		require.Equal(t, 1, dev.Injected().Misdirected)
		_, err := Recover(blockdev.NewSimFrom(dev.Crash(blockdev.CrashDropUnsynced), blockdev.SimOptions{}))
		var ce *CorruptionError
		require.ErrorAs(t, err, &ce)
		assert.Contains(t, ce.Error(), "checksum")
	})
	t.Run("bit flip in synced data", func(t *testing.T) {
		dev := newSim(10)
		write(t, dev, 60)
		tf, err := Recover(dev)
		require.NoError(t, err)
		dev.FlipBit(DataStart+FrameHeaderLen+2, 3)
		_, err = Recover(dev)
		var ce *CorruptionError
		require.ErrorAs(t, err, &ce)
		assert.Equal(t, int64(DataStart), ce.Position, "the flipped byte is in the first frame")
		assert.Less(t, ce.Position, tf.End)
	})
}
