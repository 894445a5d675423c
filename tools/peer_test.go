package tools

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestServeAndReplicate runs the serve and replicate commands' functions
// against each other: the copy's segments equal the served store's, and
// inspect on the copy shows the replication.
func TestServeAndReplicate(t *testing.T) {
	dir := smallStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, &bytes.Buffer{}, []string{dir}, ServeOptions{Listen: "127.0.0.1:0"}, func(a string) { addr <- a })
	}()
	url := "http://" + <-addr
	copyDir := filepath.Join(t.TempDir(), "copy")
	rctx, rcancel := context.WithCancel(ctx)
	replicated := make(chan error, 1)
	go func() {
		replicated <- Replicate(rctx, &bytes.Buffer{}, url, copyDir, ReplicateOptions{Name: "store", Wait: 100 * time.Millisecond})
	}()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		if st := readReplication(copyDir); st != nil && st.Applied == 1062 {
			break
		}
		require.True(t, time.Now().Before(deadline), "timed out waiting for the copy")
	}
	rcancel()
	require.NoError(t, <-replicated)

	out, err := runSegtool(t, "inspect", copyDir)
	require.NoError(t, err)
	assert.Contains(t, out, "follower of "+url+` (log "store"): applied 1062, leader at 1062, lag 0 records`)
	for _, name := range []string{"00000000000000000000.seg", "00000000000000000354.seg", "00000000000000000708.seg"} {
		a, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(t, err)
		b, err := os.ReadFile(filepath.Join(copyDir, name))
		require.NoError(t, err)
		assert.True(t, bytes.Equal(a, b), name)
	}
	cancel()
	require.NoError(t, <-served)

	// The leader is gone: the copy takes over (its leader's active segment
	// was empty, so only its header was staged).
	out, err = runSegtool(t, "promote", copyDir, "--json")
	require.NoError(t, err)
	var rep PromoteReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	assert.Equal(t, PromoteReport{Dir: copyDir, Added: 0, Start: 0, End: 1062, Leader: url}, rep)
	assert.NoFileExists(t, filepath.Join(copyDir, replicationFile))
	out, err = runSegtool(t, "inspect", copyDir)
	require.NoError(t, err)
	assert.NotContains(t, out, "follower of")

	_, err = runSegtool(t, "serve")
	assert.Equal(t, 2, ExitCode(err))
	_, err = runSegtool(t, "replicate", "http://127.0.0.1:1")
	assert.Equal(t, 2, ExitCode(err))
}
