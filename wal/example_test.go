package wal_test

import (
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// Write a few records durably, then read them back after recovery.
func Example() {
	dir, err := os.MkdirTemp("", "wal-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	dev, err := blockdev.Open(filepath.Join(dir, "00000000000000000000.wal"), blockdev.Options{Create: true})
	if err != nil {
		log.Fatal(err) // on tmpfs: set blockdev.Options.Buffered to accept the page-cache fallback
	}
	defer dev.Close()

	w, err := wal.Create(dev, 0, wal.Options{Preallocate: 1 << 20, PreZero: true})
	if err != nil {
		log.Fatal(err)
	}
	first, err := w.Append([]byte("hello"), []byte("durable"), []byte("world"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("first offset:", first)
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	s, err := wal.NewScanner(dev)
	if err != nil {
		log.Fatal(err)
	}
	for s.Next() {
		f := s.Frame()
		wal.Records(s.Header().Version, f.Payload, func(i int, rec []byte) bool {
			fmt.Printf("%d: %s\n", f.First+uint64(i), rec)
			return true
		})
	}
	if err := s.Err(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// first offset: 0
	// 0: hello
	// 1: durable
	// 2: world
}
