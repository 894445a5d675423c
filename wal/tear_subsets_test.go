package wal

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// maxTears bounds the images everyTear may make, so that a case can try
// every one of them.
const maxTears = 1 << 12

// everyTear calls check with every image a crash can leave after the
// writes that took the file through versions (versions[0] is what was
// durable, each later one the file after one more write, none synced):
// each sector is, independently, what any one of the versions holds there
// (the device writes sectors atomically, in any order, and a sector
// written twice may keep either write, or neither). A sector that every
// version holds alike reads the same whatever happened to it. The image
// has the largest of the lengths: a file a write grew keeps its new size
// (torn sectors read as zeros). Every combination is tried, not a sample:
// the case fails if there are more than maxTears.
func everyTear(t *testing.T, versions [][]byte, check func(name string, img []byte)) {
	t.Helper()
	size := 0
	for _, v := range versions {
		size = max(size, len(v))
	}
	padded := make([][]byte, len(versions))
	for i, v := range versions {
		padded[i] = make([]byte, size)
		copy(padded[i], v)
	}
	// A sector that differs between versions, and its distinct contents.
	type choice struct {
		at       int
		contents [][]byte
	}
	var choices []choice
	var ats []int
	images := 1
	for s := 0; s < size; s += blockdev.SectorSize {
		e := min(s+blockdev.SectorSize, size)
		c := choice{at: s}
		for _, v := range padded {
			if !slices.ContainsFunc(c.contents, func(b []byte) bool { return bytes.Equal(b, v[s:e]) }) {
				c.contents = append(c.contents, v[s:e])
			}
		}
		if len(c.contents) > 1 {
			choices = append(choices, c)
			ats = append(ats, s)
			images *= len(c.contents)
			require.LessOrEqual(t, images, maxTears, "too many ways to tear to try every one")
		}
	}
	require.NotEmpty(t, choices, "the writes change nothing")
	pick := make([]int, len(choices))
	for n := 0; n < images; n++ {
		img := append([]byte(nil), padded[0]...)
		for i, c := range choices {
			copy(img[c.at:], c.contents[pick[i]])
		}
		check(fmt.Sprintf("tear %d of %d: sectors %v picked %v", n, images, ats, pick), img)
		for i := range pick { // the next combination, like an odometer
			if pick[i]++; pick[i] < len(choices[i].contents) {
				break
			}
			pick[i] = 0
		}
	}
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
