package engine_test

import (
	"fmt"
	"log"
	"os"

	"github.com/segstore/segstore/engine"
)

// Append a batch durably, read a record back through the cache, scan, and
// drop a prefix.
func Example() {
	dir, err := os.MkdirTemp("", "segstore-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	l, err := engine.Open(dir, engine.DefaultOptions()) // on tmpfs: set Options.Buffered
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()

	first, err := l.Append([]byte("alpha"), []byte("beta"), []byte("gamma")) // durable when it returns
	if err != nil {
		log.Fatal(err)
	}
	rec, err := l.Read(first+1, nil)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("read %d: %s\n", first+1, rec)

	it := l.NewIterator(first)
	for it.Next() {
		fmt.Printf("scan %d: %s\n", it.Offset(), it.Record())
	}
	if err := it.Err(); err != nil {
		log.Fatal(err)
	}
	it.Close()

	if err := l.TruncateFront(first + 2); err != nil {
		log.Fatal(err)
	}
	fmt.Println("start", l.StartOffset(), "end", l.EndOffset())
	// Output:
	// read 1: beta
	// scan 0: alpha
	// scan 1: beta
	// scan 2: gamma
	// start 2 end 3
}
