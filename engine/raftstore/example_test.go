package raftstore_test

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/engine/raftstore"
)

// fsm counts the commands it applies.
type fsm struct{ applied int }

func (f *fsm) Apply(*raft.Log) any                 { f.applied++; return f.applied }
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) { return nil, fmt.Errorf("not in this example") }
func (f *fsm) Restore(io.ReadCloser) error         { return nil }

// Example wires a segstore Store into raft.NewRaft as both its LogStore
// and its StableStore: a single-node cluster that elects itself and
// applies a command.
func Example() {
	dir, _ := os.MkdirTemp("", "raftstore-example-")
	defer os.RemoveAll(dir)
	opts := engine.DefaultOptions() // durable appends: one fdatasync per StoreLogs
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	store, err := raftstore.Open(dir, opts)
	if err != nil {
		panic(err)
	}
	defer store.Close()

	conf := raft.DefaultConfig()
	conf.LocalID = "node-1"
	conf.Logger = hclog.NewNullLogger()
	_, transport := raft.NewInmemTransport("node-1")
	snapshots := raft.NewInmemSnapshotStore()
	r, err := raft.NewRaft(conf, &fsm{}, store, store, snapshots, transport)
	if err != nil {
		panic(err)
	}
	defer r.Shutdown()
	r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: conf.LocalID, Address: transport.LocalAddr()}}})
	for r.State() != raft.Leader {
		time.Sleep(10 * time.Millisecond)
	}
	f := r.Apply([]byte("hello"), time.Second)
	if err := f.Error(); err != nil {
		panic(err)
	}
	last, _ := store.LastIndex()
	fmt.Println("applied:", f.Response(), "stored through index", last)
	// Output: applied: 1 stored through index 3
}
