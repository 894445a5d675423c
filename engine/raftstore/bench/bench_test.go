// Package bench runs hashicorp/raft's LogStore and StableStore benchmarks
// (github.com/hashicorp/raft/bench) against segstore's raftstore,
// hashicorp/raft-wal and raft-boltdb in one run. It is a module of its
// own so that segstore's users do not inherit the peers' dependencies:
//
//	cd engine/raftstore/bench && go test -run NONE -bench . -count 5
package bench

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	raftbench "github.com/hashicorp/raft/bench"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/engine/raftstore"
)

type store interface {
	raft.LogStore
	raft.StableStore
	Close() error
}

var impls = []struct {
	name string
	open func(b *testing.B) store
}{
	{"segstore", func(b *testing.B) store {
		opts := engine.DefaultOptions()
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		opts.Buffered = os.Getenv("RAFTBENCH_BUFFERED") != ""
		s, err := raftstore.Open(tempDir(b), opts)
		if err != nil {
			b.Fatal(err)
		}
		return s
	}},
	{"raftwal", func(b *testing.B) store {
		w, err := raftwal.Open(tempDir(b))
		if err != nil {
			b.Fatal(err)
		}
		return w
	}},
	{"boltdb", func(b *testing.B) store {
		s, err := raftboltdb.NewBoltStore(filepath.Join(tempDir(b), "raft.db"))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}},
}

// tempDir is a new directory under RAFTBENCH_DIR if set (e.g. /dev/shm,
// where fdatasync costs nothing and only the stores' own work is left;
// segstore then needs RAFTBENCH_BUFFERED=1, as tmpfs has no O_DIRECT),
// else under the test's temporary directory.
func tempDir(b *testing.B) string {
	root := os.Getenv("RAFTBENCH_DIR")
	if root == "" {
		return b.TempDir()
	}
	dir, err := os.MkdirTemp(root, "raftbench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func run(b *testing.B, f func(*testing.B, store)) {
	for _, impl := range impls {
		b.Run("store="+impl.name, func(b *testing.B) {
			s := impl.open(b)
			defer s.Close()
			f(b, s)
		})
	}
}

func BenchmarkFirstIndex(b *testing.B) {
	run(b, func(b *testing.B, s store) { raftbench.FirstIndex(b, s) })
}
func BenchmarkLastIndex(b *testing.B) {
	run(b, func(b *testing.B, s store) { raftbench.LastIndex(b, s) })
}
func BenchmarkGetLog(b *testing.B) { run(b, func(b *testing.B, s store) { raftbench.GetLog(b, s) }) }

// BenchmarkStoreLog starts at index 0, which raft itself never uses;
// segstore and boltdb take it, raft-wal does not.
func BenchmarkStoreLog(b *testing.B) {
	run(b, func(b *testing.B, s store) {
		if _, ok := s.(*raftwal.WAL); ok {
			b.Skip("raft-wal refuses index 0, where this case starts (raft itself never writes index 0)")
		}
		raftbench.StoreLog(b, s)
	})
}

// BenchmarkStoreLogs and BenchmarkSet also run store=floor: the least any
// store must do per call to be durable, one 4 KiB O_DIRECT write over
// already-written blocks and one fdatasync. It is the device's round trips
// and nothing else, so a store's distance from it is its own overhead.
func BenchmarkStoreLogs(b *testing.B) {
	run(b, func(b *testing.B, s store) { raftbench.StoreLogs(b, s) })
	b.Run("store=floor", deviceFloor)
}
func BenchmarkSet(b *testing.B) {
	run(b, func(b *testing.B, s store) { raftbench.Set(b, s) })
	b.Run("store=floor", deviceFloor)
}

// deviceFloor writes one block per call into a pre-zeroed file, moving on
// to the next block every 32 calls as a log's tail block fills, and
// fdatasyncs after each write.
func deviceFloor(b *testing.B) {
	const size = 64 << 20
	d, err := blockdev.Open(filepath.Join(tempDir(b), "floor"), blockdev.Options{Create: true, Buffered: os.Getenv("RAFTBENCH_BUFFERED") != ""})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	block := d.Alignment().Block
	zeros := d.Alignment().Alloc(1 << 20)
	for off := int64(0); off < size; off += int64(len(zeros)) {
		if _, err := d.WriteAt(zeros, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := d.Sync(); err != nil {
		b.Fatal(err)
	}
	buf := zeros[:block]
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		b.StopTimer() // as raft's cases do around every call
		buf[n%block] = byte(n) | 1
		b.StartTimer()
		if _, err := d.WriteAt(buf, int64(n/32*block)%size); err != nil {
			b.Fatal(err)
		}
		if err := d.Sync(); err != nil {
			b.Fatal(err)
		}
	}
}
func BenchmarkGet(b *testing.B) { run(b, func(b *testing.B, s store) { raftbench.Get(b, s) }) }
func BenchmarkSetUint64(b *testing.B) {
	run(b, func(b *testing.B, s store) { raftbench.SetUint64(b, s) })
}
func BenchmarkGetUint64(b *testing.B) {
	run(b, func(b *testing.B, s store) { raftbench.GetUint64(b, s) })
}

// raft's DeleteRange case stores entries with gaps (indexes 0-2, 10-12,
// ...) and deletes ranges in the middle of what is stored; segstore's log
// is dense (raft.MonotonicLogStore) and only deletes a prefix or a
// suffix, so that case does not apply to it.
