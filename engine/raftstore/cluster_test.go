package raftstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
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

// counterFSM sums the commands it applies and remembers the last index,
// so nodes can be compared. A command is an id and a value (8 bytes each);
// a command whose id was applied before is skipped, so the test can send a
// command again when raft cannot say whether it was committed (leadership
// lost while committing) without counting it twice.
type counterFSM struct {
	mu    sync.Mutex
	sum   uint64
	count uint64
	index uint64
	seen  map[uint64]bool
}

func (f *counterFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.index = l.Index
	id := binary.LittleEndian.Uint64(l.Data)
	if f.seen[id] {
		return nil
	}
	f.seen[id] = true
	f.sum += binary.LittleEndian.Uint64(l.Data[8:])
	f.count++
	return nil
}

func (f *counterFSM) state() [3]uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return [3]uint64{f.sum, f.count, f.index}
}

func (f *counterFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := snapshot{State: [3]uint64{f.sum, f.count, f.index}}
	for id := range f.seen {
		s.Seen = append(s.Seen, id)
	}
	return s, nil
}

func (f *counterFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	var s snapshot
	if err := json.NewDecoder(r).Decode(&s); err != nil {
		return err
	}
	f.mu.Lock()
	f.sum, f.count, f.index, f.seen = s.State[0], s.State[1], s.State[2], map[uint64]bool{}
	for _, id := range s.Seen {
		f.seen[id] = true
	}
	f.mu.Unlock()
	return nil
}

type snapshot struct {
	State [3]uint64
	Seen  []uint64
}

func (s snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s); err != nil {
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
	// Raft's own timeouts; a busy machine can still miss them, so the test
	// never relies on a leader lasting: apply sends again what was not
	// confirmed, to whoever leads then.
	conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = 500*time.Millisecond, 500*time.Millisecond, 250*time.Millisecond
	conf.CommitTimeout = 5 * time.Millisecond
	conf.SnapshotThreshold, conf.SnapshotInterval = 1<<40, time.Hour // snapshots when the test says
	conf.TrailingLogs = 200
	conf.BatchApplyCh = true // concurrent Applies share one StoreLogs (one fdatasync)
	conf.Logger = hclog.NewNullLogger()
	n.fsm = &counterFSM{seen: map[uint64]bool{}}
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
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, n := range nodes {
			if n.raft != nil && n.raft.State() == raft.Leader {
				return n
			}
		}
	}
	t.Fatal("no leader elected")
	return nil
}

// apply commits n commands of value v, with ids from *next on, through
// whichever of nodes leads. Commands raft did not confirm (leadership lost
// or changed, a timeout) are sent again to the next leader: the FSM skips
// ids it applied, so each counts once. It returns the leader that
// confirmed the last of them.
func apply(t *testing.T, nodes []*node, next *uint64, n int, v uint64) *node {
	t.Helper()
	var pending []uint64
	for range n {
		pending = append(pending, *next)
		*next++
	}
	for round := 0; ; round++ {
		require.Less(t, round, 50, "%d commands still not confirmed after 50 leaders", len(pending))
		leader := waitLeader(t, nodes)
		futures := make([]raft.ApplyFuture, len(pending))
		for i, id := range pending {
			cmd := binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, id), v)
			futures[i] = leader.raft.Apply(cmd, 10*time.Second)
		}
		var failed []uint64
		for i, f := range futures {
			switch err := f.Error(); {
			case err == nil:
			case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrNotLeader),
				errors.Is(err, raft.ErrEnqueueTimeout), errors.Is(err, raft.ErrLeadershipTransferInProgress):
				failed = append(failed, pending[i])
			default:
				require.NoError(t, err)
			}
		}
		if len(failed) == 0 {
			return leader
		}
		pending = failed
	}
}

// live is the nodes that are running.
func live(nodes []*node) []*node {
	var out []*node
	for _, n := range nodes {
		if n.raft != nil {
			out = append(out, n)
		}
	}
	return out
}

func waitSame(t *testing.T, nodes []*node) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
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

	var next uint64 // command ids
	leader := apply(t, nodes, &next, 10_000, 1)
	waitSame(t, nodes)

	leader.stop(t) // the leader dies
	leader.raft = nil
	apply(t, live(nodes), &next, 2_000, 2)
	startNode(t, leader) // and comes back
	waitSame(t, nodes)
	require.Equal(t, [3]uint64{10_000 + 2*2_000, 12_000, nodes[0].fsm.state()[2]}, nodes[0].fsm.state())
	requireLogsAgree(t, nodes)

	// A follower falls behind; a snapshot compacts the leader's log past
	// what it has; it catches up from the snapshot.
	lag := nodes[0]
	if lag == waitLeader(t, nodes) {
		lag = nodes[1]
	}
	lag.stop(t)
	lag.raft = nil
	apply(t, live(nodes), &next, 3_000, 3)
	for _, n := range live(nodes) { // whoever leads when lag comes back sends the snapshot
		require.NoError(t, n.raft.Snapshot().Error())
		first, err := n.store.FirstIndex()
		require.NoError(t, err)
		last, err := n.store.LastIndex()
		require.NoError(t, err)
		require.Greater(t, first, uint64(1), "the snapshot compacted the log (TruncateFront)")
		require.LessOrEqual(t, last-first+1, uint64(200+64), "about TrailingLogs entries remain")
	}
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
