package wal

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// everyTear is testutil.EveryTear on the sectors of a blockdev device.
func everyTear(t *testing.T, versions [][]byte, check func(name string, img []byte)) {
	t.Helper()
	testutil.EveryTear(t, blockdev.SectorSize, versions, check)
}

// TestTornSealEverySubsetOfSectors tears the seal's write in every way a
// crash can (every subset of the sectors it changed), for footers whose
// payload has no zero sector, has whole zero sectors between non-zero
// bytes (an index of small numbers), and is all zeros, in every format
// version (a version 1 file's footer carries no durable mark), with and
// without preallocation. Every image must recover with every record,
// either sealed with the footer intact or unsealed with the footer cut as
// a torn tail, and reopen for appends.
func TestTornSealEverySubsetOfSectors(t *testing.T) {
	zeroRuns := make([]byte, 3000)
	zeroRuns[0], zeroRuns[1300], zeroRuns[2999] = 1, 2, 3
	footers := map[string][]byte{
		"short":                testFooter,
		"zero sectors between": zeroRuns,
		"all zeros":            make([]byte, 2500),
	}
	for name, footer := range footers {
		for v := uint32(MinVersion); v <= Version; v++ {
			for _, prealloc := range []int64{0, 64 << 10} {
				t.Run(fmt.Sprintf("%s/version=%d/prealloc=%d", name, v, prealloc), func(t *testing.T) {
					tornSealEverySubset(t, footer, Options{Version: v, SyncMode: SyncAlways, MaxWrite: 16 << 10, Preallocate: prealloc, PreZero: true})
				})
			}
		}
	}
}

// tornSealEverySubset is TestTornSealEverySubsetOfSectors for one footer
// and one writer's options.
func tornSealEverySubset(t *testing.T, footer []byte, opts Options) {
	dev := newSim(11)
	w, err := Create(dev, 100, opts)
	require.NoError(t, err)
	for i := 0; i < 20; i++ {
		_, err := w.Append(batch(100+uint64(i)*2, 2)...)
		require.NoError(t, err)
	}
	before := dev.Bytes()
	_, err = w.Seal(footer)
	require.NoError(t, err)
	everyTear(t, [][]byte{before, dev.Bytes()}, func(tear string, img []byte) {
		dev := blockdev.NewSimFrom(img, blockdev.SimOptions{})
		rec, err := Recover(dev)
		require.NoError(t, err, tear)
		require.Equal(t, uint64(140), rec.NextOffset, tear)
		if rec.Footer != nil {
			require.True(t, bytes.HasPrefix(rec.Footer.Data, footer), "%s: the footer is the one written", tear)
			return
		}
		_, _, err = ReadSealed(dev)
		require.Error(t, err, "%s: an unsealed file must not read as sealed", tear)
		w, _, err := Open(dev, Options{})
		require.NoError(t, err, "%s: an interrupted seal reopens as an active file", tear)
		require.NoError(t, w.Close())
	})
}

// TestTornAppendEverySubsetOfSectors tears the last appends' writes in
// every way a crash can, for batches of ordinary records, of records whose
// bytes are zeros across whole sectors, and with empty records, after one
// unsynced append and after two (the second rewrites the block the first
// ended in). Every image must recover to the records of the last sync, or
// of one of the appends after it, each record right.
func TestTornAppendEverySubsetOfSectors(t *testing.T) {
	zeros := func(sizes ...int) [][]byte {
		recs := make([][]byte, len(sizes))
		for i, n := range sizes {
			recs[i] = make([]byte, n)
		}
		return recs
	}
	batches := map[string][][]byte{
		"ordinary":      batch(1000, 4),
		"zero records":  zeros(1500, 1, 2100),
		"empty records": zeros(0, 600, 0, 0, 1100),
	}
	for name, last := range batches {
		for _, appends := range []int{1, 2} {
			for _, prealloc := range []int64{0, 128 << 10} {
				t.Run(fmt.Sprintf("%s/appends=%d/prealloc=%d", name, appends, prealloc), func(t *testing.T) {
					dev := newSim(7)
					w, err := Create(dev, 0, Options{SyncMode: SyncNever, MaxWrite: testMaxWrite, Preallocate: prealloc, PreZero: true})
					require.NoError(t, err)
					var all [][]byte
					for i := 0; i < 9; i++ {
						recs := batch(uint64(len(all)), 1+i%4)
						_, err := w.Append(recs...)
						require.NoError(t, err)
						all = append(all, recs...)
					}
					require.NoError(t, w.Sync())
					require.Equal(t, SyncNever, w.opts.SyncMode, "the appends after the sync are written, not synced")
					versions := [][]byte{dev.Bytes()}
					states := []int{len(all)} // records in each version
					for range appends {
						_, err = w.Append(last...)
						require.NoError(t, err)
						all = append(all, last...)
						waitWritten(w)
						versions = append(versions, dev.Bytes())
						states = append(states, len(all))
					}
					require.NoError(t, w.Close())
					everyTear(t, versions, func(tear string, img []byte) {
						got, _, err := tryReadAll(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
						require.NoError(t, err, tear)
						require.Contains(t, states, len(got), "%s: the records of one version", tear)
						for o := range got {
							require.True(t, bytes.Equal(all[o], got[o]), "%s: record %d", tear, o) // an empty record reads back as nil
						}
					})
				})
			}
		}
	}
}

// waitWritten waits until w's background flusher has written every record
// appended so far (without syncing them, in SyncNever mode).
func waitWritten(w *Writer) {
	for {
		if _, off := w.Written(); off == w.NextOffset() {
			return
		}
		time.Sleep(100 * time.Microsecond)
	}
}
