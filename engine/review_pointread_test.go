package engine

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// warnings is a slog handler that keeps the messages of warnings.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler           { return w }
func (w *warnings) WithGroup(string) slog.Handler                { return w }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, r.Message)
	return nil
}

func (w *warnings) has(s string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.msgs {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// TestThinnedFooterPointReads: a seal that thins a segment's index (its
// footer holds fewer entries than the segment has: here a device whose
// block is larger than the 4 KiB Open assumes leaves less room for the
// footer) must leave every record readable. Records larger than the index
// interval between small ones make the thinned entries uneven: a read of a
// small record that walks from a kept entry over a skipped large record
// must still find it.
func TestThinnedFooterPointReads(t *testing.T) {
	for _, big := range []int{600, 3000} {
		t.Run(fmt.Sprint(big), func(t *testing.T) {
			t.Parallel() // its own simulated directory; a core busy each
			w := &warnings{}
			d := &countingDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{Alignment: blockdev.Alignment{Memory: 512, Offset: 512, Block: 16 << 10}})}
			o := DefaultOptions()
			o.Dir, o.SegmentSize, o.MaxWrite, o.IndexInterval, o.CacheBytes, o.NoPreallocate = d, 768<<10, 64<<10, 512, 1<<20, true
			o.Logger = slog.New(w)
			l, err := Open("sim", o)
			require.NoError(t, err)
			defer l.Close()
			var want [][]byte
			var into []int // each record's bytes (with headers) into its batch before it
			for len(l.Segments()) < 3 {
				batch := [][]byte{pointRecord(l.EndOffset(), big)}
				into = append(into, 0)
				for i, n := 0, 8+big; n < 40<<10; i++ {
					batch = append(batch, pointRecord(l.EndOffset()+uint64(1+i), 10+i%7))
					into = append(into, n)
					n += 8 + 10 + i%7
				}
				_, err := l.Append(batch...)
				require.NoError(t, err)
				want = append(want, batch...)
			}
			require.True(t, w.has("thinned"), "the seal thinned the index (the case under test)")
			require.NoError(t, l.Close())
			l, err = Open("sim", o) // the sealed segments' index now comes from their footers
			require.NoError(t, err)
			// By default the reads take, of every batch, its large record,
			// every small one within two of the widest thinned intervals
			// after its end (every one whose walk from a kept entry can pass
			// over the large record), its last record, and every 61st
			// record elsewhere; with SEGSTORE_LONG=1 every record.
			wide := int64(0)
			for _, s := range *l.segs.Load() {
				if !s.isSealed() {
					continue
				}
				rec, _, err := coldRead(t, l, d, s.base) // loads the footer
				require.NoError(t, err, "offset %d", s.base)
				require.True(t, bytes.Equal(want[s.base], rec), "offset %d", s.base)
				if sum := s.sum.Load(); sum != nil {
					wide = max(wide, sum.Interval)
				}
			}
			require.Greater(t, wide, int64(o.IndexInterval), "the reopened footers' interval is the thinned one")
			read := func(off int) bool {
				last := off == len(want)-1 || into[off+1] == 0
				return testutil.Long() || int64(into[off]) <= int64(8+big)+2*wide || last || off%61 == 0
			}
			reads := 0
			for off := len(want) - 1; off >= 0; off-- {
				if !read(off) {
					continue
				}
				reads++
				rec, _, err := coldRead(t, l, d, uint64(off))
				require.NoError(t, err, "offset %d", off)
				require.True(t, bytes.Equal(want[off], rec), "offset %d", off)
			}
			t.Logf("%d of %d records read (thinned interval %d bytes)", reads, len(want), wide)
		})
	}
}

// TestPointReadCostByDeviceAlignment: the n + 8 KiB bound of a cold point
// read holds on devices whose offset alignment is 4 KiB (4Kn disks), not
// only 512 bytes: every record of batches of small and block-sized
// records.
func TestPointReadCostByDeviceAlignment(t *testing.T) {
	for _, align := range []int{512, 4096} {
		for _, size := range []int{1, 100, 4<<10 - 8, 4 << 10, 4<<10 + 1} {
			t.Run(fmt.Sprintf("align%d/%d", align, size), func(t *testing.T) {
				d := &countingDir{Dir: blockdev.NewSimDir(blockdev.SimOptions{Alignment: blockdev.Alignment{Memory: align, Offset: align, Block: 4096}})}
				o := DefaultOptions()
				o.Dir, o.Logger, o.SegmentSize, o.NoPreallocate = d, quiet, 64<<20, true
				l, err := Open("sim", o)
				require.NoError(t, err)
				defer l.Close()
				var want []int
				for _, n := range []int{1, 7, 300} {
					recs := make([][]byte, n)
					for i := range recs {
						recs[i] = pointRecord(l.EndOffset()+uint64(i), size+(i%3)*(i%5))
						want = append(want, len(recs[i]))
					}
					_, err := l.Append(recs...)
					require.NoError(t, err)
				}
				require.NoError(t, l.Roll())
				worst := int64(0)
				for off := len(want) - 1; off >= 0; off-- {
					_, cost, err := coldRead(t, l, d, uint64(off))
					require.NoError(t, err)
					worst = max(worst, cost-int64(want[off]))
				}
				require.LessOrEqual(t, worst, int64(8<<10), "a cold point read read up to the record plus %d bytes", worst)
			})
		}
	}
}

// TestTruncateBackOlderFormatFullBatches: TruncateBack rewrites the
// segment holding its cut; a segment of format version 2 (4-byte record
// headers) whose batches filled its writer must still be cut, and keep its
// records, although the same batches take more room in the current
// format's 8-byte record headers.
func TestTruncateBackOlderFormatFullBatches(t *testing.T) {
	for _, size := range []int{1, 100, 1000} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			formatVersion = 2
			defer func() { formatVersion = 0 }()
			o := testOptions(blockdev.NewSimDir(blockdev.SimOptions{}))
			o.NoPreallocate = true
			l, err := Open("sim", o)
			require.NoError(t, err)
			defer l.Close()
			require.EqualValues(t, 2, l.active.hdr.Version)
			var want [][]byte
			for b := range 3 {
				var batch [][]byte
				for n := 0; n+size+4 <= l.active.w.MaxBatchBytes(); n += size + 4 {
					batch = append(batch, pointRecord(l.EndOffset()+uint64(len(batch)), size))
				}
				_, err := l.Append(batch...)
				require.NoError(t, err, "batch %d of %d records", b, len(batch))
				want = append(want, batch...)
			}
			cut := uint64(len(want) - 3)
			require.NoError(t, l.TruncateBack(cut))
			require.Equal(t, cut, l.EndOffset())
			require.EqualValues(t, 2, l.active.hdr.Version, "the rewritten segment keeps its format")
			for off := range cut {
				rec, err := l.Read(off, nil)
				require.NoError(t, err, "offset %d", off)
				require.Equal(t, want[off], rec, "offset %d", off)
			}
			_, err = l.Append([]byte("after"))
			require.NoError(t, err, "the log takes appends after the cut")
		})
	}
}
