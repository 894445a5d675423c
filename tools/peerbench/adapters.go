package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	tidwall "github.com/tidwall/wal"

	"github.com/segstore/segstore/engine"
)

// Adapter opens one kind of store in a directory of its own.
type Adapter struct {
	Name string
	// Peer is false for segstore's own adapters: the summary compares
	// each of those with the best peer.
	Peer        bool
	Concurrency Concurrency
	// Config says in one line how the store is configured, for the report.
	Config string
	// Open opens (creating if need be) the store in dir, and dir's
	// parents if they are missing. workingSet is the
	// bytes the workload will read, for the adapter whose cache is sized
	// to hold them; the others ignore it.
	Open func(dir string, workingSet int64) (Store, error)
}

// adapters are every store the benchmark knows, in the order the summary
// lists them. Each uses the configuration its README recommends: nothing
// here is tuned for the benchmark.
var adapters = []Adapter{
	{
		Name: "segstore", Concurrency: Native,
		Config: "engine.DefaultOptions() (64 MiB segments, 64 MiB cache, SyncAlways, preallocated)",
		Open: func(dir string, _ int64) (Store, error) {
			return openSegstore(dir, engine.DefaultOptions())
		},
	},
	{
		Name: "segstore-cache", Concurrency: Native,
		Config: "engine.DefaultOptions() with CacheBytes = 1.5 x working set + 64 MiB",
		Open: func(dir string, workingSet int64) (Store, error) {
			o := engine.DefaultOptions()
			o.CacheBytes = cacheFor(workingSet)
			return openSegstore(dir, o)
		},
	},
	{
		Name: "raft-wal", Peer: true, Concurrency: NoConcurrency,
		Config: "raftwal.Open(dir) defaults (64 MiB segments), through raft.LogStore",
		Open: func(dir string, _ int64) (Store, error) {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, err
			}
			// The meta store is raft-wal's default, passed in only so that
			// Close can close it: WAL.Close leaves it open (and its file
			// locked) for a process that opens the directory again.
			meta := &metadb.BoltMetaDB{}
			w, err := raftwal.Open(dir, raftwal.WithMetaStore(meta))
			if err != nil {
				meta.Close()
				return nil, err
			}
			return &raftStore{s: w, close: func() error { return errors.Join(w.Close(), meta.Close()) }}, nil
		},
	},
	{
		Name: "raft-boltdb", Peer: true, Concurrency: NoConcurrency,
		Config: "raftboltdb.NewBoltStore(path) defaults (fsync per commit), through raft.LogStore",
		Open: func(dir string, _ int64) (Store, error) {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, err
			}
			b, err := raftboltdb.NewBoltStore(filepath.Join(dir, "raft.db"))
			if err != nil {
				return nil, err
			}
			return &raftStore{s: b, close: b.Close}, nil
		},
	},
	{
		Name: "tidwall-wal", Peer: true, Concurrency: Serialized,
		Config: "wal.Open(dir, nil): DefaultOptions (NoSync false: fsync per write, 20 MB segments, 2 cached segments)",
		Open: func(dir string, _ int64) (Store, error) {
			l, err := tidwall.Open(dir, nil)
			if err != nil {
				return nil, err
			}
			return &tidwallStore{l: l}, nil
		},
	},
	{
		Name: "pagelog", Peer: true, Concurrency: Serialized,
		Config: "one buffered file, write + fdatasync per batch, CRC-32C per record, offset index rebuilt by a scan on open",
		Open: func(dir string, _ int64) (Store, error) {
			return openPageLog(dir)
		},
	},
}

// cacheFor is the cache that holds a working set of ws bytes: the blocks
// read from disk are whole index intervals with frame headers, and the
// cache admits by cost, so it is given half as much again plus the default.
func cacheFor(ws int64) int64 { return ws + ws/2 + engine.DefaultOptions().CacheBytes }

// findAdapter returns the adapter called name.
func findAdapter(name string) (Adapter, error) {
	for _, a := range adapters {
		if a.Name == name {
			return a, nil
		}
	}
	return Adapter{}, fmt.Errorf("no adapter %q: choose from %s", name, strings.Join(adapterNames(), ", "))
}

func adapterNames() []string {
	var names []string
	for _, a := range adapters {
		names = append(names, a.Name)
	}
	return names
}

// segstoreStore maps the store's indexes 1.. onto segstore's offsets 0..
type segstoreStore struct{ l *engine.Log }

func openSegstore(dir string, o engine.Options) (Store, error) {
	// engine.Open creates the log's directory but not its parents.
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	l, err := engine.Open(dir, o)
	if err != nil {
		return nil, err
	}
	return &segstoreStore{l: l}, nil
}

func (s *segstoreStore) Append(batch [][]byte) (uint64, error) {
	off, err := s.l.Append(batch...)
	return off + 1, err
}

func (s *segstoreStore) Read(index uint64, dst []byte) ([]byte, error) {
	if index == 0 {
		return dst, fmt.Errorf("segstore: index 0 is before the first record (indexes start at 1)")
	}
	return s.l.Read(index-1, dst)
}

func (s *segstoreStore) First() (uint64, error) {
	if s.l.EndOffset() == s.l.StartOffset() {
		return 0, nil
	}
	return s.l.StartOffset() + 1, nil
}

func (s *segstoreStore) Last() (uint64, error) {
	if s.l.EndOffset() == s.l.StartOffset() {
		return 0, nil
	}
	return s.l.EndOffset(), nil
}

func (s *segstoreStore) Close() error { return s.l.Close() }

// segments is how many segment files the log has, for the report.
func (s *segstoreStore) segments() int { return len(s.l.Segments()) }

// raftStore drives a raft.LogStore: StoreLogs for a batch, GetLog for a
// read. It is driven by one appender, as raft drives it.
type raftStore struct {
	s     raft.LogStore
	close func() error
	mu    sync.Mutex // guards next and logs (one appender; the lock only keeps the race detector honest)
	next  uint64
	logs  []raft.Log
	ptrs  []*raft.Log
}

func (r *raftStore) Append(batch [][]byte) (uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.next == 0 {
		last, err := r.s.LastIndex()
		if err != nil {
			return 0, err
		}
		r.next = last + 1
	}
	if cap(r.logs) < len(batch) {
		r.logs = make([]raft.Log, len(batch))
		r.ptrs = make([]*raft.Log, len(batch))
	}
	logs, ptrs := r.logs[:len(batch)], r.ptrs[:len(batch)]
	for i, rec := range batch {
		logs[i] = raft.Log{Index: r.next + uint64(i), Term: 1, Type: raft.LogCommand, Data: rec}
		ptrs[i] = &logs[i]
	}
	if err := r.s.StoreLogs(ptrs); err != nil {
		return 0, err
	}
	first := r.next
	r.next += uint64(len(batch))
	return first, nil
}

func (r *raftStore) Read(index uint64, dst []byte) ([]byte, error) {
	var l raft.Log
	if err := r.s.GetLog(index, &l); err != nil {
		return dst, err
	}
	if l.Index != index {
		return dst, fmt.Errorf("GetLog(%d) returned the log of index %d", index, l.Index)
	}
	return append(dst, l.Data...), nil
}

func (r *raftStore) First() (uint64, error) { return r.s.FirstIndex() }
func (r *raftStore) Last() (uint64, error)  { return r.s.LastIndex() }
func (r *raftStore) Close() error           { return r.close() }

// tidwallStore drives tidwall/wal, whose caller names each index: the lock
// covers choosing the next index and writing the batch.
//
// Reads are serialized too: tidwall/wal v1.2.1's Read loads segments into
// its cache while holding only a read lock, and concurrent Reads panic
// (index out of range in Log.Read) when they race on that cache, so a user
// of it has to take a lock around Read.
type tidwallStore struct {
	l      *tidwall.Log
	mu     sync.Mutex // guards batch, and the choice of the next index
	batch  tidwall.Batch
	readMu sync.Mutex // one Read at a time (see above)
}

func (t *tidwallStore) Append(batch [][]byte) (uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	last, err := t.l.LastIndex()
	if err != nil {
		return 0, err
	}
	t.batch.Clear()
	for i, rec := range batch {
		t.batch.Write(last+1+uint64(i), rec)
	}
	if err := t.l.WriteBatch(&t.batch); err != nil {
		return 0, err
	}
	return last + 1, nil
}

func (t *tidwallStore) Read(index uint64, dst []byte) ([]byte, error) {
	t.readMu.Lock()
	b, err := t.l.Read(index)
	t.readMu.Unlock()
	if err != nil {
		return dst, err
	}
	return append(dst, b...), nil
}

func (t *tidwallStore) First() (uint64, error) { return t.l.FirstIndex() }
func (t *tidwallStore) Last() (uint64, error)  { return t.l.LastIndex() }
func (t *tidwallStore) Close() error           { return t.l.Close() }

// selectAdapters parses a comma-separated list ("" or "all": every one).
func selectAdapters(list string) ([]Adapter, error) {
	if list == "" || list == "all" {
		return adapters, nil
	}
	var out []Adapter
	seen := map[string]bool{}
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		a, err := findAdapter(name)
		if err != nil {
			return nil, err
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, a)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return adapterRank(out[i].Name) < adapterRank(out[j].Name) })
	return out, nil
}

func adapterRank(name string) int {
	for i, a := range adapters {
		if a.Name == name {
			return i
		}
	}
	return len(adapters)
}
