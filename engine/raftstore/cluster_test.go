package raftstore

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/engine"
)

// counterFSM sums the commands (8-byte numbers) it applies and remembers
// the last index, so nodes can be compared.
type counterFSM struct {
	mu    sync.Mutex
	sum   uint64
	count uint64
	index uint64
}

func (f *counterFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sum += binary.LittleEndian.Uint64(l.Data)
	f.count++
	f.index = l.Index
	return nil
}

func (f *counterFSM) state() [3]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return [3]uint64{f.sum, f.count, f.index}
}

func (f *counterFSM) Snapshot() (raft.FSMSnapshot, error) {
	s := f.state()
	return snapshot(s), nil
}

func (f *counterFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	var s [3]uint64
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return err
	}
	f.mu.Lock()
	f.sum, f.count, f.index = s[0], s[1], s[2]
	f.mu.Unlock()
	return nil
}

type snapshot [3]uint64

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([3]uint64(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (snapshot) Release() {}

// node is one raft server on its own segstore directory.
type node struct {
	id    raft.ServerID
	addr  string
	dir   string
	store *Store
	fsm   *counterFSM
	raft  *raft.Raft
	trans *raft.NetworkTransport
}

func startNode(t *testing.T, n *node) {
	t.Helper()
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.Logger = 256<<10, quietLog
	s, err := Open(n.dir, opts)
	require.NoError(t, err)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(n.dir, 2, hclog.NewNullLogger())
	require.NoError(t, err)
	var trans *raft.NetworkTransport
	for range 100 { // a restart may wait for the old socket
		if trans, err = raft.NewTCPTransportWithLogger(n.addr, nil, 3, 2*time.Second, hclog.NewNullLogger()); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, err)
	conf := raft.DefaultConfig()
	conf.LocalID = n.id
	conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = 200*time.Millisecond, 200*time.Millisecond, 100*time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.SnapshotThreshold, conf.SnapshotInterval = 1<<40, time.Hour // snapshots when the test says
	conf.TrailingLogs = 200
	conf.BatchApplyCh = true // concurrent Applies share one StoreLogs (one fdatasync)
	conf.Logger = hclog.NewNullLogger()
	n.fsm = &counterFSM{}
	r, err := raft.NewRaft(conf, n.fsm, s, s, snaps, trans)
	require.NoError(t, err)
	n.store, n.raft, n.trans = s, r, trans
}

func (n *node) stop(t *testing.T) {
	t.Helper()
	require.NoError(t, n.raft.Shutdown().Error())
	n.trans.Close()
	require.NoError(t, n.store.Close())
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().String()
}

func waitLeader(t *testing.T, nodes []*node) *node {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, n := range nodes {
			if n.raft != nil && n.raft.State() == raft.Leader {
				return n
			}
		}
	}
	t.Fatal("no leader elected")
	return nil
}

// apply commits n commands of value v through the leader.
func apply(t *testing.T, leader *node, n int, v uint64) {
	t.Helper()
	futures := make([]raft.ApplyFuture, 0, n)
	for range n {
		futures = append(futures, leader.raft.Apply(binary.LittleEndian.AppendUint64(nil, v), 5*time.Second))
	}
	for _, f := range futures {
		require.NoError(t, f.Error())
	}
}

func waitSame(t *testing.T, nodes []*node) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		same := true
		for _, n := range nodes[1:] {
			same = same && n.fsm.state() == nodes[0].fsm.state()
		}
		if same {
			return
		}
	}
	for _, n := range nodes {
		t.Logf("%s: %v", n.id, n.fsm.state())
	}
	t.Fatal("the state machines did not converge")
}

// TestThreeNodeCluster: elect, apply 10,000 commands, kill the leader,
// elect another, apply more, restart the old leader; every node's state
// machine and log agree. Then a snapshot compacts the logs, and a node
// that fell behind it catches up from the snapshot.
func TestThreeNodeCluster(t *testing.T) {
	nodes := make([]*node, 3)
	var servers []raft.Server
	for i := range nodes {
		nodes[i] = &node{id: raft.ServerID(fmt.Sprint("node-", i)), addr: freeAddr(t), dir: t.TempDir()}
		servers = append(servers, raft.Server{ID: nodes[i].id, Address: raft.ServerAddress(nodes[i].addr)})
	}
	for _, n := range nodes {
		startNode(t, n)
	}
	defer func() {
		for _, n := range nodes {
			if n.raft != nil {
				n.stop(t)
			}
		}
	}()
	require.NoError(t, nodes[0].raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error())

	leader := waitLeader(t, nodes)
	apply(t, leader, 10_000, 1)
	waitSame(t, nodes)

	leader.stop(t) // the leader dies
	leader.raft = nil
	var rest []*node
	for _, n := range nodes {
		if n != leader {
			rest = append(rest, n)
		}
	}
	second := waitLeader(t, rest)
	apply(t, second, 2_000, 2)
	startNode(t, leader) // and comes back
	waitSame(t, nodes)
	require.Equal(t, [3]uint64{10_000 + 2*2_000, 12_000, nodes[0].fsm.state()[2]}, nodes[0].fsm.state())
	requireLogsAgree(t, nodes)

	// A follower falls behind; a snapshot compacts the leader's log past
	// what it has; it catches up from the snapshot.
	lag := rest[0]
	if lag == second {
		lag = rest[1]
	}
	lag.stop(t)
	lag.raft = nil
	apply(t, second, 3_000, 3)
	require.NoError(t, second.raft.Snapshot().Error())
	first, err := second.store.FirstIndex()
	require.NoError(t, err)
	last, err := second.store.LastIndex()
	require.NoError(t, err)
	require.Greater(t, first, uint64(1), "the snapshot compacted the log (TruncateFront)")
	require.LessOrEqual(t, last-first+1, uint64(200+64), "about TrailingLogs entries remain")
	startNode(t, lag)
	waitSame(t, nodes)
	require.Equal(t, uint64(10_000+2*2_000+3*3_000), lag.fsm.state()[0], "caught up from the snapshot")
}

// requireLogsAgree checks that the entries every node still holds are the
// same on all of them.
func requireLogsAgree(t *testing.T, nodes []*node) {
	t.Helper()
	var lo, hi uint64 = 0, ^uint64(0)
	for _, n := range nodes {
		f, err := n.store.FirstIndex()
		require.NoError(t, err)
		l, err := n.store.LastIndex()
		require.NoError(t, err)
		lo, hi = max(lo, f), min(hi, l)
	}
	require.Less(t, lo, hi)
	for i := lo; i <= hi; i++ {
		var want raft.Log
		require.NoError(t, nodes[0].store.GetLog(i, &want))
		for _, n := range nodes[1:] {
			var got raft.Log
			require.NoError(t, n.store.GetLog(i, &got))
			require.Equal(t, want.Term, got.Term, "index %d", i)
			require.Equal(t, want.Data, got.Data, "index %d", i)
		}
	}
}
