// Package tools holds the logic of the segtool command line: each command
// writes to an io.Writer so tests can run it in-process. tools/segtool is a
// thin main around NewRootCommand.
package tools

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// QuickstartOptions configure Quickstart.
type QuickstartOptions struct {
	Dir        string // where to create the store; default a new temporary directory
	Appenders  int    // concurrent appenders; default 8
	Appends    int    // Append calls per appender; default 2000
	Batch      int    // records per Append; default 4
	RecordSize int    // bytes per record; default 1024
}

func (o *QuickstartOptions) defaults() {
	if o.Appenders <= 0 {
		o.Appenders = 8
	}
	if o.Appends <= 0 {
		o.Appends = 2000
	}
	if o.Batch <= 0 {
		o.Batch = 4
	}
	if o.RecordSize < 16 {
		o.RecordSize = 1024
	}
}

// Quickstart creates a log file, appends a durable workload from concurrent
// appenders (group commit), reopens it through recovery, reads every record
// back, checks each one, and prints what it did.
func Quickstart(out io.Writer, opts QuickstartOptions) error {
	opts.defaults()
	dir := opts.Dir
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "segstore-quickstart-"); err != nil {
			return fmt.Errorf("quickstart: %w", err)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	path := filepath.Join(dir, fmt.Sprintf("%020d.wal", 0))
	if _, err := os.Stat(path); err == nil {
		return fmt.Errorf("quickstart: %s already exists: choose an empty --dir", path)
	}
	fmt.Fprintf(out, "store:       %s\n", dir)

	dev, err := blockdev.Open(path, blockdev.Options{Create: true})
	if errors.Is(err, blockdev.ErrDirectIOUnsupported) {
		fmt.Fprintf(out, "warning:     %v\n             continuing with the buffered fallback\n", err)
		dev, err = blockdev.Open(path, blockdev.Options{Create: true, Buffered: true})
	}
	if err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	defer dev.Close()
	mode := "O_DIRECT"
	if !dev.Direct() {
		mode = "buffered (page cache)"
	}
	fmt.Fprintf(out, "device:      %s on %s, %s, alignment %v\n", filepath.Base(path), dev.Filesystem(), mode, dev.Alignment())

	total := int64(opts.Appenders) * int64(opts.Appends) * int64(opts.Batch)
	payload := total * int64(opts.RecordSize+wal.RecordHeaderLen)
	w, err := wal.Create(dev, 0, wal.Options{Preallocate: payload + payload/8 + 1<<20, PreZero: true})
	if err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	if err := blockdev.SyncDir(dir); err != nil { // commit point of the new file's name
		return fmt.Errorf("quickstart: %w", err)
	}

	fmt.Fprintf(out, "appending:   %d appenders x %d batches x %d records of %d B, fdatasync before each ack\n",
		opts.Appenders, opts.Appends, opts.Batch, opts.RecordSize)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, opts.Appenders)
	for a := 0; a < opts.Appenders; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs := make([][]byte, opts.Batch)
			for i := range recs {
				recs[i] = make([]byte, opts.RecordSize)
			}
			for i := 0; i < opts.Appends; i++ {
				for j, r := range recs {
					fillRecord(r, a, i, j)
				}
				if _, err := w.Append(recs...); err != nil {
					errs[a] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	st := w.Stats()
	if err := w.Close(); err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	mb := float64(st.Records*int64(opts.RecordSize)) / 1e6
	fmt.Fprintf(out, "appended:    %d records in %v: %.0f records/s, %.1f MB/s\n",
		st.Records, elapsed.Round(time.Millisecond), float64(st.Records)/elapsed.Seconds(), mb/elapsed.Seconds())
	fmt.Fprintf(out, "group commit: %d appends in %d writes and %d fdatasyncs: %.1f appends per flush, mean fdatasync %v\n",
		st.Appends, st.Writes, st.Syncs, float64(st.Appends)/float64(max(st.Writes, 1)),
		(st.SyncTime / time.Duration(max(st.Syncs, 1))).Round(time.Microsecond))

	start = time.Now()
	w, rec, err := wal.Open(dev, wal.Options{})
	if err != nil {
		return fmt.Errorf("quickstart: reopen: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	torn := "clean end"
	if rec.Torn != nil {
		torn = fmt.Sprintf("torn tail of %d bytes cut at %d", rec.Torn.Bytes, rec.Torn.Pos)
	}
	fmt.Fprintf(out, "recovered:   %d frames, offsets [0, %d), %s, in %v\n", rec.Frames, rec.NextOffset, torn, time.Since(start).Round(time.Microsecond))

	start = time.Now()
	n, err := verifyQuickstart(dev, opts)
	if err != nil {
		return fmt.Errorf("quickstart: read back: %w", err)
	}
	elapsed = time.Since(start)
	fmt.Fprintf(out, "read back:   %d records checked byte for byte in %v (%.0f MB/s, O_DIRECT scan)\n",
		n, elapsed.Round(time.Millisecond), mb/elapsed.Seconds())
	if n != total {
		return fmt.Errorf("quickstart: read back %d records, appended %d", n, total)
	}
	return nil
}

// fillRecord writes the identity of record j of batch i of appender a and a
// filler derived from it, so reading back can check every byte.
func fillRecord(r []byte, a, i, j int) {
	binary.LittleEndian.PutUint32(r[0:], uint32(a))
	binary.LittleEndian.PutUint32(r[4:], uint32(i))
	binary.LittleEndian.PutUint32(r[8:], uint32(j))
	for k := 12; k < len(r); k++ {
		r[k] = byte(a*31 + i*7 + j*3 + k)
	}
}

func verifyQuickstart(dev blockdev.Device, opts QuickstartOptions) (int64, error) {
	s, err := wal.NewScanner(dev)
	if err != nil {
		return 0, err
	}
	var n int64
	want := make([]byte, opts.RecordSize)
	seen := make(map[[3]uint32]bool)
	var bad error
	for s.Next() {
		f := s.Frame()
		wal.Records(f.Payload, func(k int, r []byte) bool {
			id := [3]uint32{binary.LittleEndian.Uint32(r), binary.LittleEndian.Uint32(r[4:]), binary.LittleEndian.Uint32(r[8:])}
			fillRecord(want, int(id[0]), int(id[1]), int(id[2]))
			if len(r) != len(want) || string(r) != string(want) || seen[id] {
				bad = fmt.Errorf("record at offset %d has unexpected content", f.First+uint64(k))
				return false
			}
			seen[id] = true
			n++
			return true
		})
		if bad != nil {
			return n, bad
		}
	}
	return n, s.Err()
}
