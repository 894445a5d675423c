package engine_test

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/segstore/segstore/engine"
)

// Append a batch durably, read a record back through the cache, scan,
// seek by time, seal the segment, export it, read it in place through a
// mapping, import it into a second log, and drop a prefix. README.md
// quotes this function's body (a test keeps the two equal).
func Example() {
	parent, err := os.MkdirTemp("", "segstore-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(parent)

	// Open creates the directory (its parent must exist). O_DIRECT: on a
	// filesystem without it (tmpfs) Open fails and says so.
	l, err := engine.Open(filepath.Join(parent, "mylog"), engine.DefaultOptions())
	if err != nil {
		log.Fatal(err)
	}
	first, err := l.Append([]byte("alpha"), []byte("beta"), []byte("gamma")) // one atomic batch, durable when it returns
	if err != nil {
		log.Fatal(err) // not acknowledged
	}
	rec, err := l.Read(first+1, nil) // through the log's own cache
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("read %d: %s\n", first+1, rec)

	it := l.NewIterator(first) // O_DIRECT read-ahead, around the cache
	for it.Next() {
		fmt.Printf("scan %d: %s\n", it.Offset(), it.Record())
	}
	if err := it.Err(); err != nil {
		log.Fatal(err)
	}
	it.Close()

	off, err := l.SeekTime(time.Now().Add(-time.Hour)) // the first record appended since then
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("appended in the last hour: from", off)

	// Only a sealed segment is mapped or imported: Roll seals the active
	// one (the log also rolls by size and age).
	if err := l.Roll(); err != nil {
		log.Fatal(err)
	}
	seg := l.Segments()[0]
	v, err := l.OpenSegment(seg.Base) // held: retention does not delete it while open
	if err != nil {
		log.Fatal(err)
	}
	var file bytes.Buffer
	if _, err := v.WriteTo(&file); err != nil { // to a socket: sendfile
		log.Fatal(err)
	}
	m, err := v.Mmap() // records read in place, no copy
	if err != nil {
		log.Fatal(err)
	}
	mit := m.NewIterator()
	for mit.Next() {
		fmt.Printf("mapped %d: %s\n", mit.Offset(), mit.Record())
	}
	if err := mit.Err(); err != nil {
		log.Fatal(err)
	}
	if err := m.Close(); err != nil {
		log.Fatal(err)
	}
	if err := v.Close(); err != nil {
		log.Fatal(err)
	}

	follower, err := engine.Open(filepath.Join(parent, "copy"), engine.DefaultOptions())
	if err != nil {
		log.Fatal(err)
	}
	info, err := follower.ImportSegment(&file, seg.Base, int64(file.Len())) // every byte verified, then renamed into place
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("imported segment %d: offsets [%d, %d)\n", info.Base, info.Base, info.Next)
	if err := follower.Close(); err != nil {
		log.Fatal(err)
	}

	if err := l.TruncateFront(first + 2); err != nil { // retention; TruncateBack drops a suffix
		log.Fatal(err)
	}
	fmt.Println("start", l.StartOffset(), "end", l.EndOffset())
	if err := l.Close(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// read 1: beta
	// scan 0: alpha
	// scan 1: beta
	// scan 2: gamma
	// appended in the last hour: from 0
	// mapped 0: alpha
	// mapped 1: beta
	// mapped 2: gamma
	// imported segment 0: offsets [0, 3)
	// start 2 end 3
}

// Tail a log that another process writes: open it read-only (no lock),
// keep it refreshed as the writer's files change, and wait for records.
func ExampleLog_Wait() {
	dir, err := os.MkdirTemp("", "segstore-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	writer, err := engine.Open(dir, engine.DefaultOptions()) // in another process, usually
	if err != nil {
		log.Fatal(err)
	}
	defer writer.Close()

	opts := engine.DefaultOptions()
	opts.ReadOnly = true
	r, err := engine.Open(dir, opts)
	if err != nil {
		log.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	refreshed := make(chan error, 1)
	go func() { refreshed <- r.KeepRefreshed(ctx, time.Second) }() // inotify, and a look every second

	go func() {
		for _, rec := range []string{"one", "two", "three"} {
			if _, err := writer.Append([]byte(rec)); err != nil {
				log.Fatal(err)
			}
		}
	}()
	for off := uint64(0); off < 3; off++ {
		if err := r.Wait(ctx, off); err != nil { // until the writer has acknowledged off
			log.Fatal(err)
		}
		rec, err := r.Read(off, nil)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%d: %s\n", off, rec)
	}
	cancel()
	if err := <-refreshed; err != context.Canceled {
		log.Fatal(err)
	}
	// Output:
	// 0: one
	// 1: two
	// 2: three
}
