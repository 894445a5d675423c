// Package tools holds the logic of the segtool command line: each command
// writes to an io.Writer so tests can run it in-process. tools/segtool is a
// thin main around NewRootCommand.
package cli

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/engine/peer"
	"github.com/segstore/segstore/wal"
)

// QuickstartOptions configure Quickstart.
type QuickstartOptions struct {
	Dir         string // where to create the store (new or empty; kept); default a new temporary directory
	Keep        bool   // keep the temporary directory and the replica in it (default: removed on return)
	Appenders   int    // concurrent appenders; default 8
	Appends     int    // Append calls per appender; default 2000
	Batch       int    // records per Append; default 4
	RecordSize  int    // bytes per record; default 1024
	SegmentSize int64  // bytes per segment file; default 16 MiB
	Reads       int    // random point reads; default 20000
	JSON        bool   // print one JSON document (QuickstartReport) instead of text
}

// QuickstartReport is what Quickstart measured.
type QuickstartReport struct {
	Dir             string  `json:"dir"`
	Buffered        bool    `json:"buffered_fallback"`
	Records         int64   `json:"records"`
	RecordsPerSec   float64 `json:"records_per_s"`
	AppendMBPerSec  float64 `json:"append_mb_per_s"`
	Appends         int64   `json:"appends"`
	Fsyncs          int64   `json:"fsyncs"`
	AppendsPerFlush float64 `json:"appends_per_flush"`
	MeanFsyncUs     float64 `json:"mean_fsync_us"`
	Segments        int     `json:"segments"`
	OpenMs          float64 `json:"reopen_ms"`
	ReadsPerSec     float64 `json:"point_reads_per_s"`
	CacheHitRatio   float64 `json:"cache_hit_ratio"`
	ScanMBPerSec    float64 `json:"scan_mb_per_s"`
	ExportedBytes   int64   `json:"exported_bytes"`
	SendfileBytes   int64   `json:"bytes_sent_by_sendfile"`
	// ReplicatedRecords went through an HTTP server into a second store,
	// whose segments were then compared byte for byte with the leader's.
	ReplicatedRecords    uint64 `json:"replicated_records"`
	ReplicaSendfileBytes int64  `json:"replication_bytes_sent_by_sendfile"`
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
	if o.SegmentSize <= 0 {
		o.SegmentSize = 16 << 20
	}
	if o.Reads <= 0 {
		o.Reads = 20000
	}
}

// Quickstart creates a store, appends a durable workload from concurrent
// appenders (group commit, segments rolling), reopens it (bounded
// recovery), reads records back at random through the cache and by a full
// scan, checks every byte, and prints what it did.
func Quickstart(out io.Writer, opts QuickstartOptions) error {
	opts.defaults()
	rep := &QuickstartReport{}
	if opts.JSON {
		jsonOut := out
		out = io.Discard
		defer func() {
			if rep.Records > 0 {
				writeReport(jsonOut, rep)
			}
		}()
	}
	dir, cleanup, err := quickstartDir(out, opts)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintf(out, "store:        %s\n", dir)
	rep.Dir = dir

	l, eopts, err := openQuickstartStore(out, dir, opts, rep)
	if err != nil {
		return err
	}
	total, err := writeWorkload(out, l, eopts, opts, rep)
	if err != nil {
		return err
	}
	l, err = reopenStore(out, dir, eopts, rep)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := readBackAtRandom(out, l, total, opts, rep); err != nil {
		return err
	}
	if err := scanAndCheck(out, l, total, opts, rep); err != nil {
		return err
	}
	if err := exportOnce(out, dir, l, rep); err != nil {
		return err
	}
	return replicateOnce(out, dir, l, rep)
}

// quickstartDir returns where the store goes and a cleanup for Quickstart to
// defer. With opts.Dir set it is opts.Dir, which must be empty (or new) and
// must not have a "-replica" sibling yet; without, it is "store" in a new
// temporary directory, which cleanup removes (the store and its replica,
// which goes beside it) unless opts.Keep.
func quickstartDir(out io.Writer, opts QuickstartOptions) (dir string, cleanup func(), err error) {
	cleanup = func() {}
	if opts.Dir != "" {
		if entries, _ := os.ReadDir(opts.Dir); len(entries) > 0 {
			return "", nil, usageError{fmt.Errorf("quickstart: %s already exists and is not empty: choose an empty --dir", opts.Dir)}
		} else if _, err := os.Stat(opts.Dir + "-replica"); err == nil {
			return "", nil, usageError{fmt.Errorf("quickstart: %s-replica, where the replica goes, already exists: remove it or choose another --dir", opts.Dir)}
		}
		return opts.Dir, cleanup, nil
	}
	parent, err := os.MkdirTemp("", "segstore-quickstart-")
	if err != nil {
		return "", nil, fmt.Errorf("quickstart: %w", err)
	}
	if !opts.Keep {
		cleanup = func() {
			if err := os.RemoveAll(parent); err != nil {
				fmt.Fprintf(out, "warning:      removing %s: %v\n", parent, err)
				return
			}
			fmt.Fprintf(out, "removed:      %s (the store and its replica; --keep keeps them)\n", parent)
		}
	}
	return filepath.Join(parent, "store"), cleanup, nil
}

// openQuickstartStore creates the store in dir with segments of
// opts.SegmentSize, falling back to buffered I/O (and saying so) where the
// file system refuses O_DIRECT. The options it returns reopen the store.
func openQuickstartStore(out io.Writer, dir string, opts QuickstartOptions, rep *QuickstartReport) (*engine.Log, engine.Options, error) {
	eopts := engine.DefaultOptions()
	// The engine's default MaxWrite, said here so that the output can
	// tell how full a segment gets before it is sealed.
	eopts.SegmentSize, eopts.MaxWrite = opts.SegmentSize, int(min(4<<20, opts.SegmentSize/4))
	eopts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	l, err := engine.Open(dir, eopts)
	if errors.Is(err, blockdev.ErrDirectIOUnsupported) {
		fmt.Fprintf(out, "warning:      %v\n              continuing with the buffered fallback\n", err)
		eopts.Buffered, rep.Buffered = true, true
		l, err = engine.Open(dir, eopts)
	}
	if err != nil {
		return nil, eopts, fmt.Errorf("quickstart: %w", flagError(err, map[string]string{"SegmentSize": "segment-size"}))
	}
	return l, eopts, nil
}

// writeWorkload appends the workload of opts to l from opts.Appenders
// concurrent appenders, reports the append rate and group commit, and
// closes l, in every case. It returns how many records it appended.
func writeWorkload(out io.Writer, l *engine.Log, eopts engine.Options, opts QuickstartOptions, rep *QuickstartReport) (uint64, error) {
	fmt.Fprintf(out, "appending:    %d appenders x %d batches x %d records of %d B, fdatasync before each ack, segments of %s (sealed once within one write, %s, of it)\n",
		opts.Appenders, opts.Appends, opts.Batch, opts.RecordSize, formatSize(opts.SegmentSize), formatSize(int64(eopts.MaxWrite)))
	batch := make([][]byte, opts.Batch)
	for i := range batch {
		batch[i] = make([]byte, opts.RecordSize)
	}
	if !wal.BatchFits(batch, eopts.MaxWrite, int64(l.Storage().Alignment.Block)) {
		l.Close()
		return 0, usageError{fmt.Errorf("quickstart: --batch %d records of --record-size %d do not fit in one write (%s with segments of %s): lower --batch or --record-size, or raise --segment-size",
			opts.Batch, opts.RecordSize, formatSize(int64(eopts.MaxWrite)), formatSize(opts.SegmentSize))}
	}
	elapsed, err := appendConcurrently(l, opts)
	if err != nil {
		l.Close()
		return 0, fmt.Errorf("quickstart: %w", err)
	}
	st := l.Stats()
	mb := float64(st.Records*int64(opts.RecordSize)) / 1e6
	rep.Records, rep.RecordsPerSec, rep.AppendMBPerSec = st.Records, float64(st.Records)/elapsed.Seconds(), mb/elapsed.Seconds()
	rep.Appends, rep.Fsyncs, rep.AppendsPerFlush, rep.MeanFsyncUs = st.Appends, st.Syncs, st.MeanBatch, float64(st.MeanSync.Nanoseconds())/1e3
	fmt.Fprintf(out, "appended:     %d records in %v: %.0f records/s, %.1f MB/s\n",
		st.Records, elapsed.Round(time.Millisecond), float64(st.Records)/elapsed.Seconds(), mb/elapsed.Seconds())
	fmt.Fprintf(out, "group commit: %d appends in %d writes and %d fdatasyncs: %.1f appends per flush, mean fdatasync %v\n",
		st.Appends, st.Writes, st.Syncs, st.MeanBatch, st.MeanSync.Round(time.Microsecond))
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("quickstart: %w", err)
	}
	return uint64(st.Records), nil
}

// appendConcurrently runs opts.Appenders goroutines, each making
// opts.Appends Append calls of opts.Batch records filled by fillRecord, and
// returns how long they took and the first appender's error, if any.
func appendConcurrently(l *engine.Log, opts QuickstartOptions) (time.Duration, error) {
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
				if _, err := l.Append(recs...); err != nil {
					errs[a] = err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	for _, err := range errs {
		if err != nil { // the first: the others most likely say the same
			return elapsed, err
		}
	}
	return elapsed, nil
}

// reopenStore opens the closed store again and reports what recovery did
// and how long it took.
func reopenStore(out io.Writer, dir string, eopts engine.Options, rep *QuickstartReport) (*engine.Log, error) {
	l, err := engine.Open(dir, eopts)
	if err != nil {
		return nil, fmt.Errorf("quickstart: reopen: %w", err)
	}
	rec := l.Stats().LastOpenRecovery
	rep.Segments, rep.OpenMs = rec.Segments, float64(rec.Duration.Microseconds())/1e3
	fmt.Fprintf(out, "reopened:     %d segments (%d sealed, trusted through the manifest), offsets [%d, %d), in %v\n",
		rec.Segments, rec.Sealed+rec.Deferred, l.StartOffset(), l.EndOffset(), rec.Duration.Round(time.Microsecond))
	return l, nil
}

// readBackAtRandom makes opts.Reads point reads at random offsets below
// total (through the cache), checks each record, and reports the read rate
// and the cache hit ratio.
func readBackAtRandom(out io.Writer, l *engine.Log, total uint64, opts QuickstartOptions, rep *QuickstartReport) error {
	want := make([]byte, opts.RecordSize)
	r := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 0, opts.RecordSize)
	var err error
	start := time.Now()
	for i := 0; i < opts.Reads; i++ {
		off := r.Uint64N(total)
		if buf, err = l.Read(off, buf[:0]); err != nil {
			return fmt.Errorf("quickstart: read %d: %w", off, err)
		}
		if err := checkRecord(buf, want); err != nil {
			return fmt.Errorf("quickstart: record %d: %w", off, err)
		}
	}
	elapsed := time.Since(start)
	cs := l.Stats().Cache
	rep.ReadsPerSec, rep.CacheHitRatio = float64(opts.Reads)/elapsed.Seconds(), cs.HitRatio()
	fmt.Fprintf(out, "point reads:  %d random reads checked in %v (%.0f reads/s), cache hit ratio %.2f\n",
		opts.Reads, elapsed.Round(time.Millisecond), float64(opts.Reads)/elapsed.Seconds(), cs.HitRatio())
	return nil
}

// scanAndCheck reads the whole log in order with an iterator, checks that
// the offsets run from 0 without a gap, that every record is one that was
// appended and none comes twice, and that there are total of them, and
// reports the scan rate.
func scanAndCheck(out io.Writer, l *engine.Log, total uint64, opts QuickstartOptions, rep *QuickstartReport) error {
	mb := float64(int64(total)*int64(opts.RecordSize)) / 1e6
	want := make([]byte, opts.RecordSize)
	start := time.Now()
	it := l.NewIterator(0)
	defer it.Close()
	seen := make(map[[3]uint32]bool, total)
	var n uint64
	for it.Next() {
		if it.Offset() != n {
			return fmt.Errorf("quickstart: scan returned offset %d, expected %d", it.Offset(), n)
		}
		r := it.Record()
		if err := checkRecord(r, want); err != nil {
			return fmt.Errorf("quickstart: record %d: %w", n, err)
		}
		id := [3]uint32{binary.LittleEndian.Uint32(r), binary.LittleEndian.Uint32(r[4:]), binary.LittleEndian.Uint32(r[8:])}
		if seen[id] {
			return fmt.Errorf("quickstart: record %d appears twice", n)
		}
		seen[id] = true
		n++
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("quickstart: scan: %w", err)
	}
	elapsed := time.Since(start)
	rep.ScanMBPerSec = mb / elapsed.Seconds()
	fmt.Fprintf(out, "scan:         %d records checked byte for byte in %v (%.0f MB/s, O_DIRECT read-ahead)\n",
		n, elapsed.Round(time.Millisecond), mb/elapsed.Seconds())
	if n != total {
		return fmt.Errorf("quickstart: scanned %d records, appended %d", n, total)
	}
	return nil
}

// replicateOnce serves the log on 127.0.0.1, replicates it into a second
// store through that server, and checks that every segment arrived byte
// for byte.
func replicateOnce(out io.Writer, dir string, l *engine.Log, rep *QuickstartReport) error {
	if err := l.Roll(); err != nil { // seal the active segment: all of it replicates
		return fmt.Errorf("quickstart: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("quickstart: %w", err)
	}
	srv := peer.NewServer(map[string]*engine.Log{"quickstart": l}, peer.ServerOptions{}).HTTPServer("")
	go srv.Serve(ln)
	defer srv.Close()
	replicaDir := dir + "-replica"
	ropts := engine.DefaultOptions()
	ropts.Logger = quietLogger
	replica, err := engine.Open(replicaDir, ropts)
	if err != nil {
		return fmt.Errorf("quickstart: replica: %w", err)
	}
	defer replica.Close()
	before := l.Stats().ExportSendfileBytes
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	end := l.EndOffset()
	var followErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		followErr = peer.Follow(ctx, "http://"+ln.Addr().String(), replica, peer.FollowOptions{Name: "quickstart", Logger: quietLogger,
			Progress: func(s peer.FollowStats) {
				if s.Applied >= end {
					cancel()
				}
			}})
	}()
	<-done
	if replica.EndOffset() != end {
		return fmt.Errorf("quickstart: the replica reached offset %d of %d: %v", replica.EndOffset(), end, followErr)
	}
	elapsed := time.Since(start)
	mine := replica.Segments()
	for i, s := range l.Segments() {
		if !s.Sealed {
			continue
		}
		a, err1 := os.ReadFile(filepath.Join(dir, s.File))
		b, err2 := os.ReadFile(filepath.Join(replicaDir, mine[i].File))
		if err := errors.Join(err1, err2); err != nil || !bytes.Equal(a, b) {
			return fmt.Errorf("quickstart: replica segment %s differs from the leader's (%v)", s.File, err)
		}
	}
	rep.ReplicatedRecords, rep.ReplicaSendfileBytes = end, l.Stats().ExportSendfileBytes-before
	fmt.Fprintf(out, "replicated:   %d records into %s over HTTP on 127.0.0.1 in %v, %d segments identical byte for byte; %d bytes sent by sendfile\n",
		end, replicaDir, elapsed.Round(time.Millisecond), len(mine)-1, rep.ReplicaSendfileBytes)
	return nil
}

// exportOnce sends the first sealed segment over loopback TCP through the
// zero-copy path (SegmentView.WriteTo: sendfile) and checks that the
// bytes received are the file's.
func exportOnce(out io.Writer, dir string, l *engine.Log, rep *QuickstartReport) error {
	segs := l.Segments()
	if len(segs) < 2 {
		fmt.Fprintf(out, "export:       skipped (no sealed segment yet)\n")
		return nil
	}
	seg := segs[0]
	v, err := l.OpenSegment(seg.Base)
	if err != nil {
		return fmt.Errorf("quickstart: export: %w", err)
	}
	defer v.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("quickstart: export: %w", err)
	}
	defer ln.Close()
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		got <- b
	}()
	start := time.Now()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return fmt.Errorf("quickstart: export: %w", err)
	}
	_, err = v.WriteTo(c)
	c.Close()
	received := <-got
	elapsed := time.Since(start)
	if err != nil {
		return fmt.Errorf("quickstart: export: %w", err)
	}
	file, err := os.ReadFile(filepath.Join(dir, seg.File))
	if err != nil {
		return fmt.Errorf("quickstart: export: %w", err)
	}
	if !bytes.Equal(file, received) {
		return fmt.Errorf("quickstart: export of %s delivered %d bytes that differ from the file's %d", seg.File, len(received), len(file))
	}
	rep.ExportedBytes, rep.SendfileBytes = int64(len(received)), l.Stats().ExportSendfileBytes
	fmt.Fprintf(out, "export:       segment %s (%d bytes) sent over loopback TCP and checked in %v; bytes sent by sendfile %d, copied %d\n",
		seg.File, len(received), elapsed.Round(time.Microsecond), l.Stats().ExportSendfileBytes, l.Stats().ExportCopiedBytes)
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

// checkRecord compares r with the record its identity names.
func checkRecord(r, want []byte) error {
	if len(r) != len(want) {
		return fmt.Errorf("%d bytes, want %d", len(r), len(want))
	}
	fillRecord(want, int(binary.LittleEndian.Uint32(r)), int(binary.LittleEndian.Uint32(r[4:])), int(binary.LittleEndian.Uint32(r[8:])))
	if string(r) != string(want) {
		return errors.New("content differs from what was appended")
	}
	return nil
}

func newQuickstartCommand() *cobra.Command {
	var qs QuickstartOptions
	quick := &cobra.Command{
		Use:   "quickstart",
		Short: "Write a log with concurrent durable appenders, reopen it, read every record back, export and replicate it",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Quickstart(cmd.OutOrStdout(), qs)
		},
	}
	quick.Flags().StringVar(&qs.Dir, "dir", "", "directory for the store, new or empty, kept after (default: a new temporary directory, removed after unless --keep)")
	quick.Flags().BoolVar(&qs.Keep, "keep", false, "keep the temporary store and its replica")
	quick.Flags().IntVar(&qs.Appenders, "appenders", 8, "concurrent appenders")
	quick.Flags().IntVar(&qs.Appends, "appends", 2000, "Append calls per appender")
	quick.Flags().IntVar(&qs.Batch, "batch", 4, "records per Append")
	quick.Flags().IntVar(&qs.RecordSize, "record-size", 1024, "bytes per record")
	sizeVar(quick.Flags(), &qs.SegmentSize, "segment-size", 16<<20, "segment file size")
	quick.Flags().IntVar(&qs.Reads, "reads", 20000, "random point reads")
	quick.Flags().BoolVar(&qs.JSON, "json", false, "print one JSON document instead of text")
	bound(quick, "1", "", "appenders", "appends", "batch")
	bound(quick, "16", "65536", "record-size")
	bound(quick, "0", "", "reads")
	bound(quick, "64KiB", "16GiB", "segment-size")
	return quick
}
