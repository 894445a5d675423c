package cli

import (
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"

	"github.com/segstore/segstore/engine"
)

// ExportBenchOptions configure ExportBench.
type ExportBenchOptions struct {
	Dir  string // where to build the segment; default a new temporary directory
	Size int64  // bytes of records in the segment; default 1 GiB
	Pin  bool   // pin sender and receiver to different CPUs
	Cold bool   // drop the page cache before each path (root only)
	JSON bool   // one JSON document instead of a table
	Runs int    // rounds over all paths (interleaved); each figure is the median; default 3
}

// ExportResult is one path's figures.
type ExportResult struct {
	Path           string  `json:"path"`
	Bytes          int64   `json:"bytes"`
	Seconds        float64 `json:"seconds"`
	GBps           float64 `json:"gb_per_s"`
	SenderCPU      float64 `json:"sender_cpu_s_per_gib"`
	ReceiverCPU    float64 `json:"receiver_cpu_s_per_gib"`
	SyscallsPerGiB float64 `json:"sender_syscalls_per_gib"`
	UserCopies     int     `json:"user_space_copies"` // of the payload, by construction
	Checksum       string  `json:"crc32c"`
}

// exportPath sends the file [0, size) to the socket fd and returns how
// many system calls it made.
type exportPath struct {
	name   string
	copies int
	send   func(file *os.File, size int64, sock net.Conn) (syscalls int64, err error)
}

// buildSegment writes a log holding one sealed segment of about size
// bytes of 64 KiB records and returns its file and size.
func buildSegment(dir string, size int64) (string, int64, error) {
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.SyncMode, opts.NoPreallocate = size+(64<<20), engine.SyncNever, true
	if opts.SegmentSize > engine.MaxSegmentSize {
		return "", 0, usageError{fmt.Errorf("--size %d is too large for one segment: use at most %d", size, engine.MaxSegmentSize-(64<<20))}
	}
	l, err := engine.Open(dir, opts)
	if err != nil {
		return "", 0, err
	}
	defer l.Close()
	rec := make([]byte, 64<<10)
	batch := make([][]byte, 16)
	for i := range batch {
		batch[i] = rec
	}
	for written := int64(0); written < size; written += 16 * int64(len(rec)) {
		for i := range rec {
			rec[i] = byte(written>>16) + byte(i)
		}
		if _, err := l.Append(batch...); err != nil {
			return "", 0, err
		}
	}
	if err := l.Roll(); err != nil {
		return "", 0, err
	}
	seg := l.Segments()[0]
	return filepath.Join(dir, seg.File), seg.Bytes, nil
}

// median of f over rs.
func median(rs []ExportResult, f func(ExportResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func crcOf(f *os.File, size int64) (string, error) {
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		return "", err
	}
	return fmt.Sprintf("%08x", h.Sum32()), nil
}
