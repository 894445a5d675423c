package wal

import (
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/segstore/segstore/internal/testutil"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// fsIocShutdown is FS_IOC_SHUTDOWN (_IOR('X', 125, __u32)); with
// fsGoingDownNoLogFlush the filesystem stops at once without flushing its
// journal: everything not yet durable is lost, as in a power cut.
const (
	fsIocShutdown         = 0x8004587d
	fsGoingDownNoLogFlush = 2
)

// loopMount makes a 256 MiB ext4 filesystem on a loop device and mounts it;
// it skips the test (saying why) where that is not possible.
type loopMount struct {
	t        *testing.T
	img, dev string
	dir      string
}

func newLoopMount(t *testing.T) *loopMount {
	if os.Geteuid() != 0 {
		t.Skip("power-cut test needs root (losetup, mount)")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("power-cut test needs %s: %v", tool, err)
		}
	}
	m := &loopMount{t: t, img: filepath.Join(t.TempDir(), "img"), dir: filepath.Join(t.TempDir(), "mnt")}
	require.NoError(t, os.MkdirAll(m.dir, 0o755))
	require.NoError(t, os.WriteFile(m.img, nil, 0o644))
	require.NoError(t, os.Truncate(m.img, 256<<20))
	out, err := exec.Command("losetup", "-f", "--show", m.img).CombinedOutput()
	if err != nil {
		t.Skipf("power-cut test: no loop device here: losetup: %v: %s", err, out)
	}
	m.dev = string(out[:len(out)-1])
	t.Cleanup(m.close)
	m.run("mkfs.ext4", "-q", "-F", m.dev)
	m.run("mount", m.dev, m.dir)
	return m
}

func (m *loopMount) run(name string, args ...string) {
	out, err := exec.Command(name, args...).CombinedOutput()
	require.NoError(m.t, err, "%s %v: %s", name, args, out)
}

// powerCut shuts the filesystem down without flushing its journal.
func (m *loopMount) powerCut() {
	f, err := os.Open(m.dir)
	require.NoError(m.t, err)
	defer f.Close()
	// The argument is a pointer to the flags.
	require.NoError(m.t, unix.IoctlSetPointerInt(int(f.Fd()), fsIocShutdown, fsGoingDownNoLogFlush), "FS_IOC_SHUTDOWN")
}

func (m *loopMount) remount() {
	m.run("umount", m.dir)
	m.run("mount", m.dev, m.dir)
}

func (m *loopMount) close() {
	if exec.Command("umount", m.dir).Run() != nil {
		exec.Command("umount", "-l", m.dir).Run()
	}
	if m.dev != "" {
		exec.Command("losetup", "-d", m.dev).Run()
	}
}

// TestPowerCutLoop is TestKillLoop with a power cut: the child appends
// durably to a file on a loop-mounted ext4; the parent shuts the filesystem
// down without flushing its journal at a random moment, kills the child,
// remounts, and checks every acknowledged record. Unlike SIGKILL this loses
// whatever was not durable, the new file's directory entry included.
func TestPowerCutLoop(t *testing.T) {
	if _, ok := testutil.ChildArg(killChildEnv); ok {
		t.Skip("in the child")
	}
	m := newLoopMount(t)
	cycles := 20
	if testutil.Long() {
		cycles = 200
	}
	path := filepath.Join(m.dir, "00000000000000000000.wal")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	want := map[uint64][]byte{}
	var acked, torn int
	for cycle := 0; cycle < cycles; cycle++ {
		acks := runChild(t, rng, cycle, path, m.powerCut)
		acked += len(acks)
		addAcks(want, acks)
		m.remount()
		if checkAcked(t, path, want, cycle) {
			torn++
		}
	}
	t.Logf("power cuts=%d acknowledged batches=%d records=%d torn tails seen=%d", cycles, acked, len(want), torn)
}
