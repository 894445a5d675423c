package cli

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAppendOnTmpfsLeavesNothing: a store on tmpfs is refused, by append
// and replicate, with advice a CLI user can follow, and leaves nothing
// behind.
func TestAppendOnTmpfsLeavesNothing(t *testing.T) {
	var st syscall.Statfs_t
	if syscall.Statfs("/dev/shm", &st) != nil || st.Type != 0x01021994 { // TMPFS_MAGIC
		t.Skip("no tmpfs at /dev/shm")
	}
	shm, err := os.MkdirTemp("/dev/shm", "segtool-test-")
	require.NoError(t, err)
	defer os.RemoveAll(shm)
	for _, args := range [][]string{{"append", filepath.Join(shm, "new")}, {"append", shm},
		{"replicate", "http://127.0.0.1:1", filepath.Join(shm, "copy")}} {
		dir := args[len(args)-1]
		r := runBin(t, "a\n", args...)
		assert.Equal(t, ExitEnvironment, r.code)
		assert.Contains(t, r.stderr, "is on tmpfs")
		assert.Contains(t, r.stderr, "put the store on a disk-backed filesystem")
		ents, _ := os.ReadDir(shm)
		assert.Empty(t, ents, "%s: nothing left behind", dir)
	}
}

// TestServeOnAReadOnlyMount: serve --read-only serves a store on a
// read-only filesystem (a read-only bind mount; root only), where a
// command that writes is refused with what works there.
func TestServeOnAReadOnlyMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("a read-only bind mount needs root")
	}
	src := smallStore(t)
	ro := filepath.Join(t.TempDir(), "ro")
	require.NoError(t, os.Mkdir(ro, 0o755))
	require.NoError(t, syscall.Mount(src, ro, "", syscall.MS_BIND, ""))
	defer syscall.Unmount(ro, 0)
	require.NoError(t, syscall.Mount("", ro, "", syscall.MS_REMOUNT|syscall.MS_BIND|syscall.MS_RDONLY, ""))

	r := runBin(t, "x\n", "append", ro)
	assert.Equal(t, ExitEnvironment, r.code)
	assert.Contains(t, r.stderr, "read-only file system (the store is on a read-only filesystem: cat, dump, inspect, verify and serve --read-only work there)")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, io.Discard, []string{ro}, ServeOptions{Listen: "127.0.0.1:0", ReadOnly: true}, func(a string) { addr <- a })
	}()
	copyDir := filepath.Join(t.TempDir(), "copy")
	err := Replicate(ctx, io.Discard, io.Discard, "http://"+<-addr, copyDir, ReplicateOptions{Name: "ro", UntilCaughtUp: true})
	require.NoError(t, err)
	st := readReplication(copyDir)
	require.NotNil(t, st)
	assert.Equal(t, storeEnd(t, ro), st.Received, "every record of the read-only store")
	cancel()
	require.NoError(t, <-served)
}
