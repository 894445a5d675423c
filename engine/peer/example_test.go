package peer_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/engine/peer"
)

// Serve a log over HTTP: list its segments, fetch them (sendfile), tail
// the active one, and metrics.
func ExampleNewServer() {
	dir, err := os.MkdirTemp("", "segstore-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	l, err := engine.Open(filepath.Join(dir, "orders"), engine.DefaultOptions())
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close() // after the server has stopped
	if _, err := l.Append([]byte("first order")); err != nil {
		log.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	// Without a Token only loopback clients are served.
	srv := peer.NewServer(map[string]*engine.Log{"orders": l}, peer.ServerOptions{}).HTTPServer("")
	go srv.Serve(ln)
	defer srv.Close()

	resp, err := http.Get("http://" + ln.Addr().String() + "/v1/logs")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.Status, len(body) > 0)
	// Output:
	// 200 OK true
}

// Replicate a served log into a follower until it has every record, then
// promote the follower: what it staged of the leader's active segment
// becomes its own.
func ExampleFollow() {
	dir, err := os.MkdirTemp("", "segstore-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	leader, err := engine.Open(filepath.Join(dir, "leader"), engine.DefaultOptions())
	if err != nil {
		log.Fatal(err)
	}
	defer leader.Close()
	if _, err := leader.Append([]byte("a"), []byte("b"), []byte("c")); err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := peer.NewServer(map[string]*engine.Log{"orders": leader}, peer.ServerOptions{}).HTTPServer("")
	go srv.Serve(ln)
	defer srv.Close()

	follower, err := engine.Open(filepath.Join(dir, "follower"), engine.DefaultOptions())
	if err != nil {
		log.Fatal(err)
	}
	defer follower.Close()
	ctx, cancel := context.WithCancel(context.Background())
	err = peer.Follow(ctx, "http://"+ln.Addr().String(), follower, peer.FollowOptions{Name: "orders",
		Progress: func(s peer.FollowStats) {
			if s.Received >= leader.EndOffset() { // every record durable here (staged: the leader's segment is not sealed)
				cancel()
			}
		}})
	if err != context.Canceled {
		log.Fatal(err)
	}

	// The leader is lost: the follower takes over what it received.
	added, err := peer.Promote(follower)
	if err != nil {
		log.Fatal(err)
	}
	rec, err := follower.Read(2, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("promoted %d records; record 2: %s\n", added, rec)
	// Output:
	// promoted 3 records; record 2: c
}
