package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestMain lets the test binary stand in for peerbench as its own child,
// as the real binary re-executes itself.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && (os.Args[1] == "child" || os.Args[1] == "hold") {
		os.Exit(childMain(os.Args[1], os.Args[2:]))
	}
	os.Exit(m.Run())
}

func TestCheckRecord(t *testing.T) {
	good := func(size int, index uint64) []byte {
		rec := make([]byte, size)
		fillRecord(rec, index)
		return rec
	}
	for _, tc := range []struct {
		name  string
		rec   []byte
		index uint64
		size  int
		err   string
	}{
		{"good", good(1024, 7), 7, 1024, ""},
		{"header only", good(minRecord, 9), 9, minRecord, ""},
		{"another record", good(1024, 8), 7, 1024, "read the record of index 8"},
		{"short", good(1024, 7)[:1000], 7, 1024, "read 1000 bytes, want 1024"},
		{"long", append(good(1024, 7), 0), 7, 1024, "read 1025 bytes, want 1024"},
		{"length field", func() []byte { r := good(1024, 7); binary.LittleEndian.PutUint32(r[8:], 1023); return r }(), 7, 1024, "length field says 1023"},
		{"body of another record", func() []byte { r := good(1024, 7); copy(r[recordHeader:], good(1024, 8)[recordHeader:]); return r }(), 7, 1024, "byte 12"},
		{"last byte", func() []byte { r := good(1024, 7); r[1023]++; return r }(), 7, 1024, "byte 1023"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkRecord(tc.rec, tc.index, tc.size)
			if tc.err == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.err)
			}
		})
	}
}

// shifted is a store that files every read one index off: the harness
// must notice.
type shifted struct{ Store }

func (s shifted) Read(index uint64, dst []byte) ([]byte, error) { return s.Store.Read(index+1, dst) }

// batches is what the conformance test appends: batch sizes and record
// sizes that cross the stores' block, page and segment-buffer sizes.
var batches = []struct{ n, size int }{{1, minRecord}, {3, 100}, {64, 1 << 10}, {1, 4096}, {16, 64 << 10}, {1, 1<<20 + 7}}

// TestAdapterConformance runs every adapter through the same contract:
// empty bounds, appends get consecutive indexes from 1, every record reads
// back whole, an index past the end is an error, everything survives a
// close and reopen and appends go on after it, and the harness catches a
// store that reads the wrong record.
func TestAdapterConformance(t *testing.T) {
	for _, a := range adapters {
		t.Run(a.Name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "parent", "store") // parents are made too
			s, err := a.Open(dir, 8<<20)
			require.NoError(t, err)
			first, last, err := bounds(s)
			require.NoError(t, err)
			assert.Equal(t, [2]uint64{0, 0}, [2]uint64{first, last}, "an empty store's first and last index")

			sizes := map[uint64]int{}
			next := uint64(1)
			appendAll := func(s Store) {
				for _, b := range batches {
					batch := make([][]byte, b.n)
					for i := range batch {
						batch[i] = make([]byte, b.size)
						fillRecord(batch[i], next+uint64(i))
						sizes[next+uint64(i)] = b.size
					}
					got, err := s.Append(batch)
					require.NoError(t, err)
					require.Equal(t, next, got, "the first index of a batch of %d", b.n)
					next += uint64(b.n)
				}
			}
			readAll := func(s Store) {
				first, last, err := bounds(s)
				require.NoError(t, err)
				require.Equal(t, [2]uint64{1, next - 1}, [2]uint64{first, last})
				var buf []byte
				for i := first; i <= last; i++ {
					buf, err = s.Read(i, buf[:0])
					require.NoError(t, err, "index %d", i)
					require.NoError(t, checkRecord(buf, i, sizes[i]))
				}
				_, err = s.Read(last+1, nil)
				assert.Error(t, err, "reading past the last index")
				// The harness catches a store that files reads one off.
				err = readRange(shifted{s}, first, first+1, sizes[first], nil)
				assert.ErrorContains(t, err, "record", "a store returning the wrong record")
			}
			appendAll(s)
			readAll(s)
			require.NoError(t, s.Close())

			s, err = a.Open(dir, 8<<20)
			require.NoError(t, err)
			readAll(s)
			appendAll(s)
			readAll(s)
			require.NoError(t, s.Close())
		})
	}
}

// TestConcurrentAppend: the adapters that take concurrent appends file
// every tagged record once, in each appender's order; the others refuse.
func TestConcurrentAppend(t *testing.T) {
	for _, a := range adapters {
		t.Run(a.Name, func(t *testing.T) {
			p := Params{Kind: "append", Adapter: a.Name, Dir: filepath.Join(t.TempDir(), "s"), RecordSize: 200, Batch: 1, Records: 400, Workers: 4}
			var r Result
			err := doAppend(a, p, &r)
			if a.Concurrency == NoConcurrency {
				assert.ErrorContains(t, err, "one appender")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, int64(400), r.Ops)
		})
	}
}

// TestVerifyTaggedCatchesLoss: the read-back after concurrent appends
// fails when a record is missing, duplicated or out of its appender's
// order.
func TestVerifyTaggedCatchesLoss(t *testing.T) {
	for _, tc := range []struct {
		name  string
		tags  []uint64
		count []int64
		err   string
	}{
		{"all there", []uint64{tag(0, 0), tag(1, 0), tag(0, 1)}, []int64{2, 1}, ""},
		{"one missing", []uint64{tag(0, 0), tag(0, 1)}, []int64{2, 1}, "want 3 records"},
		{"duplicated", []uint64{tag(0, 0), tag(0, 0), tag(1, 0)}, []int64{2, 1}, "not the next record"},
		{"out of order", []uint64{tag(0, 1), tag(0, 0), tag(1, 0)}, []int64{2, 1}, "not the next record"},
		{"an index, not a tag", []uint64{1, tag(0, 1), tag(1, 0)}, []int64{2, 1}, "not the next record"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := openPageLog(t.TempDir())
			require.NoError(t, err)
			defer s.Close()
			for _, tg := range tc.tags {
				rec := make([]byte, 64)
				fillRecord(rec, tg)
				_, err := s.Append([][]byte{rec})
				require.NoError(t, err)
			}
			err = verifyTagged(s, len(tc.count), tc.count, 64)
			if tc.err == "" {
				assert.NoError(t, err)
			} else {
				assert.ErrorContains(t, err, tc.err)
			}
		})
	}
}

// TestPageLogTornTail: a scan keeps every whole frame and cuts what a
// crash in the middle of a write leaves after them.
func TestPageLogTornTail(t *testing.T) {
	for _, tc := range []struct {
		name   string
		damage func(f *os.File, end int64)
	}{
		{"half a header", func(f *os.File, end int64) { f.WriteAt([]byte{9, 0, 0, 0}, end) }},
		{"header without its payload", func(f *os.File, end int64) { f.WriteAt([]byte{0, 4, 0, 0, 1, 2, 3, 4, 5}, end) }},
		{"payload failing its CRC", func(f *os.File, end int64) { f.WriteAt([]byte{1, 0, 0, 0, 0, 0, 0, 0, 7}, end) }},
		{"length past any record", func(f *os.File, end int64) { f.WriteAt([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, end) }},
		{"zeroed tail", func(f *os.File, end int64) { f.WriteAt(make([]byte, 4096), end) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, err := openPageLog(dir)
			require.NoError(t, err)
			for i := uint64(1); i <= 5; i++ {
				rec := make([]byte, 100)
				fillRecord(rec, i)
				_, err := s.Append([][]byte{rec})
				require.NoError(t, err)
			}
			end := s.end
			tc.damage(s.f, end)
			require.NoError(t, s.Close())
			s, err = openPageLog(dir)
			require.NoError(t, err)
			defer s.Close()
			assert.Equal(t, end, s.end, "the file after the cut")
			st, err := os.Stat(filepath.Join(dir, pageLogFile))
			require.NoError(t, err)
			assert.Equal(t, end, st.Size())
			last, _ := s.Last()
			assert.Equal(t, uint64(5), last)
			require.NoError(t, readRange(s, 1, 5, 100, nil))
		})
	}
}

// TestWorkloadsInProcess runs every kind of workload on every adapter on a
// small data set, in this process: each one reads back what it checks.
func TestWorkloadsInProcess(t *testing.T) {
	for _, a := range adapters {
		t.Run(a.Name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			const n = 3000
			var r Result
			require.NoError(t, doBuild(a, Params{Dir: dir, RecordSize: dataRecord, Batch: 256, Records: n}, &r))
			assert.Equal(t, int64(n), r.Ops)
			base := Params{Dir: dir, RecordSize: dataRecord, DataSet: n, WorkingSet: n * dataRecord}
			r = Result{}
			require.NoError(t, doSeqRead(a, base, &r))
			assert.Equal(t, int64(n), r.Ops)
			for _, dist := range []string{"uniform", "zipf"} {
				for _, workers := range []int{1, 4} {
					p := base
					p.Records, p.Dist, p.Workers, p.Hot, p.Seed = 400, dist, workers, workers > 1, 1
					r = Result{}
					require.NoError(t, doRandRead(a, p, &r), "%s x%d", dist, workers)
					assert.Equal(t, int64(400), r.Ops)
				}
			}
			r = Result{}
			require.NoError(t, doReopen(a, base, &r))
			assert.Positive(t, r.ReopenMs)
			p := base
			p.Dist = "pareto"
			assert.ErrorContains(t, doRandRead(a, p, &Result{}), "unknown distribution")
			p = base
			p.DataSet = n + 1
			assert.ErrorContains(t, doSeqRead(a, p, &Result{}), fmt.Sprintf("want [1, %d]", n+1))
		})
	}
}

func TestReadIndexes(t *testing.T) {
	for _, dist := range []string{"uniform", "zipf"} {
		idx, err := readIndexes(dist, 1, 10, 1009, 20000)
		require.NoError(t, err)
		newest := 0
		for _, i := range idx {
			require.True(t, i >= 10 && i <= 1009, "%s drew %d outside [10, 1009]", dist, i)
			if i > 1009-100 {
				newest++
			}
		}
		if dist == "zipf" {
			// Zipf(1.1) over 1000 ranks puts far more than a tenth of the
			// draws on the newest tenth.
			assert.Greater(t, newest, 20000/2, "zipf draws on the newest 100")
		} else {
			assert.Less(t, newest, 20000/5, "uniform draws on the newest 100")
		}
	}
}
