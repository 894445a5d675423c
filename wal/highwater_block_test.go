package wal

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// TestHighWaterMarkOnLargeBlocks: on a device whose block is larger than
// the header block (a 16 or 64 KiB filesystem block, or a page-sized block
// on a 16 or 64 KiB page system), the mark's write of its block must not
// rewrite the frames that share it, and the data writes that rewrite the
// header block must not take the mark back. Appends cross many marks, in
// a new file and after a reopen; every record comes back, and recovery
// with the mark finds what a scan of the whole file finds.
func TestHighWaterMarkOnLargeBlocks(t *testing.T) {
	for _, a := range []blockdev.Alignment{
		{Memory: 512, Offset: 512, Block: 4096},
		{Memory: 512, Offset: 512, Block: 8192},
		{Memory: 512, Offset: 4096, Block: 16 << 10},
		{Memory: 512, Offset: 512, Block: 64 << 10},
		{Memory: 512, Offset: 16 << 10, Block: 16 << 10}, // a 16 KiB page as the direct I/O unit
	} {
		blk := a.Block
		for _, reopen := range []string{"", "open", "resume"} {
			what := fmt.Sprintf("%v, reopen %q", a, reopen)
			t.Run(what, func(t *testing.T) {
				simOpts := blockdev.SimOptions{Alignment: a}
				// A file made on a device with 512-byte sectors, opened on one
				// whose direct I/O unit holds frames: its mark is dropped.
				createOpts := simOpts
				if reopen != "" && int64(a.Offset) > DataStart {
					createOpts = blockdev.SimOptions{}
				}
				dev := blockdev.NewSim(createOpts)
				opts := Options{MaxWrite: 4 * blk, Preallocate: int64(64 * blk), PreZero: true, highWaterStep: 512}
				w, err := Create(dev, 0, opts)
				require.NoError(t, err, what)
				want := map[uint64][]byte{}
				next := uint64(0)
				for i := 0; i < 60; i++ {
					if reopen != "" && i == 3 {
						require.NoError(t, w.Close(), what)
						dev = blockdev.NewSimFrom(dev.Bytes(), simOpts)
						if reopen == "open" {
							w, _, err = Open(dev, opts)
						} else { // as after a clean close record, which gives no mark
							rec, rerr := Recover(dev)
							require.NoError(t, rerr, what)
							w, err = Resume(dev, &Recovery{Header: rec.Header, End: rec.End, NextOffset: rec.NextOffset, LastTime: rec.LastTime}, opts)
						}
						require.NoError(t, err, what)
					}
					recs := batch(next, 1+i%5)
					if i%4 == 3 {
						recs = [][]byte{testutil.Record(next, blk+100*i)}
					}
					first, err := w.Append(recs...)
					require.NoError(t, err, what)
					for j, r := range recs {
						want[first+uint64(j)] = r
					}
					next += uint64(len(recs))
				}
				require.NoError(t, w.Close(), what)
				for _, img := range [][]byte{dev.Bytes(), dev.Crash(blockdev.CrashDropUnsynced)} {
					_, rerr := Recover(blockdev.NewSimFrom(img, simOpts))
					require.NoError(t, rerr, what)
					rec := sameRecovery(t, img, what)
					require.NotNil(t, rec, what)
					if int64(a.Offset) > DataStart {
						require.Zero(t, rec.HighWater, "%s: a device that cannot write the mark alone keeps none", what)
					} else {
						require.GreaterOrEqual(t, rec.HighWater, rec.End, "%s: the mark lies below the frames", what)
					}
					got, _ := readAll(t, blockdev.NewSimFrom(img, simOpts))
					require.Len(t, got, len(want), what)
					for off, r := range want {
						require.Equal(t, r, got[off], "%s: record %d", what, off)
					}
				}
			})
		}
	}
}
