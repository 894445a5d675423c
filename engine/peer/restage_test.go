package peer

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
)

// TestRestageFailureKeepsTheStage: the follower has staged the whole of
// the leader's active segment, the leader seals it, and the answer to
// the header-block Range is cut short (the leader dies mid-answer) or
// stalls while the follower is stopped. The stage held every record of
// the segment, durably; it must still hold them, so that Promote (the
// leader being lost for good) gives them back.
func TestRestageFailureKeepsTheStage(t *testing.T) {
	for _, stall := range []bool{false, true} {
		t.Run(fmt.Sprintf("stall=%v", stall), func(t *testing.T) {
			leader, follower, _, active := stagedAll(t)
			require.NoError(t, leader.Roll())
			file := leaderFile(t, leader, active.File)
			inner := NewServer(map[string]*engine.Log{"main": leader}, ServerOptions{MaxWait: time.Second}).HTTPServer("").Handler
			var dead atomic.Bool
			var after atomic.Int64
			served := make(chan struct{})
			var once sync.Once
			done := make(chan struct{})
			defer close(done)
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if dead.Load() { // the leader is lost after it began the answer
					after.Add(1)
					http.Error(w, "the leader is gone", http.StatusServiceUnavailable)
					return
				}
				if r.Header.Get("Range") == fmt.Sprintf("bytes=0-%d", wal.DataStart-1) &&
					strings.HasSuffix(r.URL.Path, fmt.Sprintf("/segments/%d", active.Base)) {
					dead.Store(true)
					conn, _, err := http.NewResponseController(w).Hijack()
					if err != nil {
						panic(err)
					}
					defer conn.Close()
					fmt.Fprintf(conn, "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-%d/%d\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", wal.DataStart-1, len(file), wal.DataStart)
					conn.Write(file[:100])
					once.Do(func() { close(served) })
					if stall {
						<-done
					}
					return
				}
				inner.ServeHTTP(w, r)
			}))
			defer ts.Close()
			stop := follow(ts.URL, follower)
			select {
			case <-served:
			case <-time.After(time.Minute):
				t.Fatal("the follower never restaged the header block")
			}
			if stall {
				// The follower is stopped while it waits for the rest of
				// the body (or just before: either way it must keep the
				// stage). Not a timing check.
				time.Sleep(200 * time.Millisecond)
			} else {
				waitFor(t, "the follower to go on after the cut answer", func() bool { return after.Load() > 0 })
			}
			stop()
			fi, err := os.Stat(filepath.Join(follower.Dir(), StageFile))
			require.NoError(t, err)
			assert.GreaterOrEqual(t, fi.Size(), active.ExportSize(), "the stage still holds what it had staged durably")
			added, err := Promote(follower)
			require.NoError(t, err)
			assert.Equal(t, active.Next-active.Base, added, "every staged record is promoted")
		})
	}
}

// TestPromoteAfterRestage: a follower killed after the header block was
// restaged and before the import holds the sealed file whole (the
// sealed header block, its moved mark, the footer). Promote takes every
// record, the log takes appends and reopens with them.
func TestPromoteAfterRestage(t *testing.T) {
	open := func(dir string) *engine.Log {
		l, err := openBigSegments(dir, nil)
		require.NoError(t, err)
		return l
	}
	leader := open(t.TempDir())
	defer leader.Close()
	appendBytes(t, leader, 3<<20)
	require.NoError(t, leader.Roll())
	seg := leader.Segments()[0]
	file := leaderFile(t, leader, seg.File)
	dir := t.TempDir()
	follower := open(dir)
	st, err := openStage(follower.Files())
	require.NoError(t, err)
	require.NoError(t, st.start(seg.Base))
	require.NoError(t, st.append(bytes.NewReader(file), int64(len(file))))
	require.NoError(t, st.overwrite(bytes.NewReader(file), 4096))
	require.NoError(t, st.f.Close()) // killed here
	added, err := Promote(follower)
	require.NoError(t, err)
	assert.Equal(t, seg.Next-seg.Base, added)
	_, err = follower.Append([]byte("after"))
	require.NoError(t, err)
	require.NoError(t, follower.Close())
	follower = open(dir)
	defer follower.Close()
	assert.Equal(t, seg.Next+1, follower.EndOffset())
	for _, off := range []uint64{seg.Base, seg.Next - 1} {
		want, err := leader.Read(off, nil)
		require.NoError(t, err)
		got, err := follower.Read(off, nil)
		require.NoError(t, err)
		assert.Equal(t, want, got)
	}
}
