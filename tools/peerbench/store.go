package main

import (
	"encoding/binary"
	"fmt"
)

// Store is the one interface every log under test is driven through.
//
// Indexes start at 1 and are given by the store in append order, one per
// record. Append returns once the batch is durable (on the device, as the
// store's own sync says). Read returns the record at index, appended to dst.
// Stores whose Concurrency is Native or Serialized may be called from many
// goroutines at once; the others are driven by one goroutine.
type Store interface {
	// Append writes the batch durably and returns the index of its first
	// record.
	Append(batch [][]byte) (first uint64, err error)
	// Read appends the record at index to dst.
	Read(index uint64, dst []byte) ([]byte, error)
	// First and Last are the first and last index held (0, 0 when empty).
	First() (uint64, error)
	Last() (uint64, error)
	Close() error
}

// Concurrency says whether an adapter takes Append from many goroutines.
type Concurrency string

const (
	// Native: the store itself takes concurrent appends (group commit or its
	// own lock).
	Native Concurrency = "native"
	// Serialized: the adapter holds one lock across choosing the next index
	// and writing it, as a user of the store's API must.
	Serialized Concurrency = "serialized"
	// NoConcurrency: the store's contract is one appender (raft.LogStore is
	// called by raft's single log writer).
	NoConcurrency Concurrency = "n/a"
)

// A record as the benchmark writes it. Every record carries the index the
// store must file it under and its own length, so that a store returning
// the wrong record, a short one or a long one fails the run:
//
//	0        8         12              len
//	+--------+---------+---------------+
//	| index  | length  | filler        |
//	| u64 LE | u32 LE  | byte(index+i) |
//	+--------+---------+---------------+
//
// The filler byte at position i is byte(index + i), so a record whose
// header survived but whose body belongs to another record fails too.
const recordHeader = 12

// minRecord is the smallest record the benchmark writes.
const minRecord = recordHeader

// fillRecord writes the record for index into rec (its whole length).
func fillRecord(rec []byte, index uint64) {
	binary.LittleEndian.PutUint64(rec[0:8], index)
	binary.LittleEndian.PutUint32(rec[8:12], uint32(len(rec)))
	for i := recordHeader; i < len(rec); i++ {
		rec[i] = byte(index + uint64(i))
	}
}

// checkRecord says what is wrong with rec read back as index, expected to
// be size bytes long; nil if nothing. Checking the filler costs one pass
// over the record, which every store pays alike.
func checkRecord(rec []byte, index uint64, size int) error {
	if len(rec) != size {
		return fmt.Errorf("record %d: read %d bytes, want %d", index, len(rec), size)
	}
	if got := binary.LittleEndian.Uint64(rec[0:8]); got != index {
		return fmt.Errorf("record %d: read the record of index %d", index, got)
	}
	if got := binary.LittleEndian.Uint32(rec[8:12]); int(got) != size {
		return fmt.Errorf("record %d: its length field says %d, want %d", index, got, size)
	}
	for i := recordHeader; i < len(rec); i++ {
		if rec[i] != byte(index+uint64(i)) {
			return fmt.Errorf("record %d: byte %d is %#x, want %#x", index, i, rec[i], byte(index+uint64(i)))
		}
	}
	return nil
}
