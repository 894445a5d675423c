package raftstore

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/engine"
)

func simOptions(d *blockdev.SimDir) engine.Options {
	o := engine.DefaultOptions()
	o.Dir, o.SegmentSize, o.MaxWrite, o.IndexInterval = d, 64<<10, 16<<10, 4096
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return o
}

func entries(from, to uint64) []*raft.Log {
	var out []*raft.Log
	for i := from; i <= to; i++ {
		out = append(out, &raft.Log{Index: i, Term: 1 + i/10, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("cmd-%d", i)),
			Extensions: []byte{byte(i)}, AppendedAt: time.Unix(0, int64(i)*1000)})
	}
	return out
}

// requireRange checks FirstIndex, LastIndex and every entry between.
func requireRange(t *testing.T, s *Store, first, last uint64) {
	t.Helper()
	f, err := s.FirstIndex()
	require.NoError(t, err)
	l, err := s.LastIndex()
	require.NoError(t, err)
	require.Equal(t, [2]uint64{first, last}, [2]uint64{f, l})
	if first == 0 {
		return
	}
	for i := first; i <= last; i++ {
		var got raft.Log
		require.NoError(t, s.GetLog(i, &got), "index %d", i)
		require.Equal(t, *entries(i, i)[0], got)
	}
	var got raft.Log
	assert.ErrorIs(t, s.GetLog(first-1, &got), raft.ErrLogNotFound)
	assert.ErrorIs(t, s.GetLog(last+1, &got), raft.ErrLogNotFound)
}

// TestLogStoreContract: an empty store, appends, gaps refused, deletes
// at both ends and of everything, a new start after that, each step
// checked again after a reopen.
func TestLogStoreContract(t *testing.T) {
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	s, err := Open("sim", simOptions(d))
	require.NoError(t, err)
	reopen := func() {
		t.Helper()
		require.NoError(t, s.Close())
		s, err = Open("sim", simOptions(d))
		require.NoError(t, err)
	}
	assert.True(t, s.IsMonotonic())
	requireRange(t, s, 0, 0)
	var l raft.Log
	assert.ErrorIs(t, s.GetLog(1, &l), raft.ErrLogNotFound)

	require.NoError(t, s.StoreLogs(entries(1, 100)))
	require.NoError(t, s.StoreLog(entries(101, 101)[0]))
	requireRange(t, s, 1, 101)
	reopen()
	requireRange(t, s, 1, 101)

	assert.ErrorContains(t, s.StoreLogs(entries(103, 104)), "the next index is 102", "a gap")
	assert.ErrorContains(t, s.StoreLogs([]*raft.Log{entries(102, 102)[0], entries(104, 104)[0]}), "consecutive")
	requireRange(t, s, 1, 101)

	require.NoError(t, s.DeleteRange(1, 40)) // compaction after a snapshot
	requireRange(t, s, 41, 101)
	require.NoError(t, s.DeleteRange(90, 200)) // a conflicting suffix
	requireRange(t, s, 41, 89)
	reopen()
	requireRange(t, s, 41, 89)
	assert.ErrorContains(t, s.DeleteRange(50, 60), "only a prefix or a suffix")
	require.NoError(t, s.StoreLogs(entries(90, 120)))
	requireRange(t, s, 41, 120)

	require.NoError(t, s.DeleteRange(41, 120)) // everything, as after a snapshot restore
	requireRange(t, s, 0, 0)
	require.NoError(t, s.StoreLogs(entries(500, 520))) // starts again past the snapshot
	requireRange(t, s, 500, 520)
	reopen()
	requireRange(t, s, 500, 520)
	require.NoError(t, s.Close())
}

func TestStableStoreContract(t *testing.T) {
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	s, err := Open("sim", simOptions(d))
	require.NoError(t, err)
	_, err = s.Get([]byte("CurrentTerm"))
	assert.EqualError(t, err, "not found", "raft compares this message")
	v, err := s.GetUint64([]byte("CurrentTerm"))
	assert.EqualError(t, err, "not found")
	assert.Zero(t, v)

	require.NoError(t, s.SetUint64([]byte("CurrentTerm"), 7))
	require.NoError(t, s.Set([]byte("LastVoteCand"), []byte("node-2")))
	require.NoError(t, s.Set([]byte("empty"), nil))
	require.NoError(t, s.Close())
	s, err = Open("sim", simOptions(d))
	require.NoError(t, err)
	defer s.Close()
	v, err = s.GetUint64([]byte("CurrentTerm"))
	require.NoError(t, err)
	assert.Equal(t, uint64(7), v)
	b, err := s.Get([]byte("LastVoteCand"))
	require.NoError(t, err)
	assert.Equal(t, "node-2", string(b))
	b, err = s.Get([]byte("empty"))
	require.NoError(t, err)
	assert.Empty(t, b)
}

// TestCrashAroundStoreLogs: a crash at any point leaves every
// acknowledged StoreLogs whole and nothing of an unacknowledged one but
// all or none of it; the stable store keeps its last acknowledged value.
func TestCrashAroundStoreLogs(t *testing.T) {
	for _, mode := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
		for batch := 1; batch <= 5; batch++ {
			t.Run(fmt.Sprintf("mode=%d/batches=%d", mode, batch), func(t *testing.T) {
				d := blockdev.NewSimDir(blockdev.SimOptions{Seed: uint64(batch)})
				s, err := Open("sim", simOptions(d))
				require.NoError(t, err)
				var acked uint64
				for i := range batch {
					from := uint64(i*20 + 1)
					require.NoError(t, s.StoreLogs(entries(from, from+19)))
					acked = from + 19
					require.NoError(t, s.SetUint64([]byte("CurrentTerm"), uint64(i)))
				}
				crashed := d.Crash(mode)
				s.Close()
				s, err = Open("sim", simOptions(crashed))
				require.NoError(t, err)
				defer s.Close()
				requireRange(t, s, 1, acked)
				term, err := s.GetUint64([]byte("CurrentTerm"))
				require.NoError(t, err)
				assert.Equal(t, uint64(batch-1), term)
			})
		}
	}
}

// TestUnacknowledgedStoreLogs: a StoreLogs whose fdatasync fails is not
// acknowledged; after a crash the store holds the acknowledged entries
// and the failed batch whole or not at all, never in part.
func TestUnacknowledgedStoreLogs(t *testing.T) {
	for _, mode := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
		t.Run(fmt.Sprint("mode=", mode), func(t *testing.T) {
			d := blockdev.NewSimDir(blockdev.SimOptions{Seed: 3})
			s, err := Open("sim", simOptions(d))
			require.NoError(t, err)
			require.NoError(t, s.StoreLogs(entries(1, 30)))
			seg := d.File(fmt.Sprintf("%020d.seg", 0))
			seg.FailNth(blockdev.OpSync, seg.Calls(blockdev.OpSync)+1)
			require.Error(t, s.StoreLogs(entries(31, 60)), "not acknowledged")
			crashed := d.Crash(mode)
			s.Close()
			s, err = Open("sim", simOptions(crashed))
			require.NoError(t, err)
			defer s.Close()
			last, err := s.LastIndex()
			require.NoError(t, err)
			require.Contains(t, []uint64{30, 60}, last, "the failed batch is whole or absent")
			requireRange(t, s, 1, last)
		})
	}
}

// TestStableStoreCompacts: Sets past the compaction size rewrite the
// stable file; every key keeps its last value across reopens and a crash.
func TestStableStoreCompacts(t *testing.T) {
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	s, err := Open("sim", simOptions(d))
	require.NoError(t, err)
	big := make([]byte, 10<<10)
	for i := range 300 { // 3 MB of Sets: compacted at least twice
		big[0] = byte(i)
		require.NoError(t, s.Set([]byte(fmt.Sprint("k", i%7)), big))
		require.NoError(t, s.SetUint64([]byte("CurrentTerm"), uint64(i)))
	}
	crashed := d.Crash(blockdev.CrashTear)
	s.Close()
	s, err = Open("sim", simOptions(crashed))
	require.NoError(t, err)
	defer s.Close()
	term, err := s.GetUint64([]byte("CurrentTerm"))
	require.NoError(t, err)
	assert.Equal(t, uint64(299), term)
	for k := range 7 {
		v, err := s.Get([]byte(fmt.Sprint("k", k)))
		require.NoError(t, err)
		last := 299 - (299-k)%7 // the last i with i%7 == k
		assert.Equal(t, byte(last), v[0], "key k%d", k)
		assert.Len(t, v, 10<<10)
	}
	size, err := crashed.Size(stableName)
	require.NoError(t, err)
	assert.Less(t, size, int64(2*stableCompactAt), "compacted")
}

// TestOpenKeepsTheCallersOptions: options whose SegmentSize is left 0 are
// the caller's, zero fields taking the engine's defaults (Open once
// replaced them all with engine.DefaultOptions(), dropping Dir, Buffered
// and Logger: this store then went to the real directory it was named).
func TestOpenKeepsTheCallersOptions(t *testing.T) {
	d := blockdev.NewSimDir(blockdev.SimOptions{})
	opts := simOptions(d)
	opts.SegmentSize, opts.MaxWrite, opts.IndexInterval = 0, 0, 0
	absent := filepath.Join(t.TempDir(), "absent")
	s, err := Open(absent, opts)
	require.NoError(t, err)
	require.NoError(t, s.StoreLogs(entries(1, 3)))
	require.NoError(t, s.Close())
	names, err := d.List()
	require.NoError(t, err)
	assert.NotEmpty(t, names, "the store is in the simulated directory given as Dir")
	_, err = os.Stat(absent)
	assert.True(t, os.IsNotExist(err), "nothing was made on disk")
}

// TestOpenKeepsEveryOptionAsGiven: each engine.Options field set by
// itself reaches the log as the caller gave it (no field is dropped, and
// options with a zero SegmentSize are not swapped for the defaults);
// ReadOnly and the SyncModes that leave stored entries unreadable until a
// sync, which a raft store cannot honour, are refused.
func TestOpenKeepsEveryOptionAsGiven(t *testing.T) {
	shared, err := cache.New(1 << 20)
	require.NoError(t, err)
	defer shared.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	other := slog.New(slog.NewTextHandler(io.Discard, nil))
	clock := func() time.Time { return time.Unix(1e9, 0) }
	rows := []struct {
		field string
		set   func(*engine.Options)
	}{
		{"SegmentSize", func(o *engine.Options) { o.SegmentSize = 1 << 20 }},
		{"SegmentAge", func(o *engine.Options) { o.SegmentAge = time.Hour }},
		{"SyncMode", func(o *engine.Options) { o.SyncMode = engine.SyncNever }},
		{"SyncInterval", func(o *engine.Options) { o.SyncMode, o.SyncInterval = engine.SyncInterval, 5*time.Millisecond }},
		{"CacheBytes", func(o *engine.Options) { o.CacheBytes = 1 << 20 }},
		{"Cache", func(o *engine.Options) { o.Cache = shared }},
		{"RetentionBytes", func(o *engine.Options) { o.RetentionBytes = 1 << 30 }},
		{"RetentionAge", func(o *engine.Options) { o.RetentionAge = time.Hour }},
		{"MaxOpenSegments", func(o *engine.Options) { o.MaxOpenSegments = 3 }},
		{"IndexInterval", func(o *engine.Options) { o.IndexInterval = 8 << 10 }},
		{"NoPreallocate", func(o *engine.Options) { o.NoPreallocate = true }},
		{"ReadOnly", func(o *engine.Options) { o.ReadOnly = true }},
		{"VerifyOnOpen", func(o *engine.Options) { o.VerifyOnOpen = true }},
		// On the directory Open opens (not preallocated: no 64 MiB of zeros on disk).
		{"Buffered", func(o *engine.Options) { o.Buffered, o.Dir, o.NoPreallocate = true, nil, true }},
		{"MaxWrite", func(o *engine.Options) { o.MaxWrite = 32 << 10 }},
		{"ExportDropCache", func(o *engine.Options) { o.ExportDropCache = true }},
		{"Logger", func(o *engine.Options) { o.Logger = other }},
		{"Now", func(o *engine.Options) { o.Now = clock }},
		{"Dir", func(o *engine.Options) { o.Dir = blockdev.NewSimDir(blockdev.SimOptions{Seed: 2}) }},
	}
	var fields, named []string
	for _, f := range reflect.VisibleFields(reflect.TypeFor[engine.Options]()) {
		fields = append(fields, f.Name)
	}
	for _, row := range rows {
		named = append(named, row.field)
	}
	require.ElementsMatch(t, fields, named, "a row for every engine.Options field")

	for _, row := range rows {
		t.Run(row.field, func(t *testing.T) {
			o := engine.Options{Dir: blockdev.NewSimDir(blockdev.SimOptions{}), Logger: quiet}
			row.set(&o)
			s, err := Open(t.TempDir(), o)
			if o.ReadOnly {
				require.ErrorContains(t, err, "Options.ReadOnly is not supported")
				return
			}
			if o.SyncMode != engine.SyncAlways {
				require.ErrorContains(t, err, "only SyncAlways (the default) gives")
				return
			}
			require.NoError(t, err)
			defer s.Close()
			used := s.Log().Options()
			g, u := reflect.ValueOf(o), reflect.ValueOf(used)
			for i := range g.NumField() {
				gf, uf, name := g.Field(i), u.Field(i), g.Type().Field(i).Name
				switch {
				case gf.IsZero():
				case gf.Kind() == reflect.Func || gf.Kind() == reflect.Pointer:
					assert.Equal(t, gf.Pointer(), uf.Pointer(), "Options.%s is not the caller's", name)
				case gf.Kind() == reflect.Interface:
					assert.True(t, gf.Interface() == uf.Interface(), "Options.%s is not the caller's", name)
				default:
					assert.Equal(t, gf.Interface(), uf.Interface(), "Options.%s is not the caller's", name)
				}
			}
			if o.Buffered {
				assert.False(t, s.Log().Storage().Direct, "Buffered: segment files are opened without O_DIRECT")
			}
			require.NoError(t, s.StoreLogs(entries(1, 3)))
			requireRange(t, s, 1, 3)
		})
	}
}
