package tools

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/schollz/progressbar/v3"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
)

// ErrDamage: verify found damage (exit status 1).
var ErrDamage = errors.New("damage found")

// usageError is a mistake in the command line (exit status 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// flagError reports an engine option that Open refused in the terms of
// the command line: flags maps each option the command sets to the flag
// that sets it. Other errors are returned as they are.
func flagError(err error, flags map[string]string) error {
	var oe *engine.OptionError
	if errors.As(err, &oe) {
		if flag, ok := flags[oe.Option]; ok {
			return usageError{fmt.Errorf("--%s %s %s", flag, oe.Value, oe.Problem)}
		}
	}
	return err
}

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// openStore opens the existing store in dir: read-only (no lock: beside
// a live writer) unless write.
func openStore(dir string, write bool) (*engine.Log, error) {
	if err := isStore(dir); err != nil {
		return nil, err
	}
	opts := engine.DefaultOptions()
	opts.ReadOnly, opts.Logger = !write, quietLogger
	return engine.Open(dir, opts)
}

// writeReport prints a report as one indented JSON document (--json).
func writeReport(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// isStore says, as a usage error, why dir is not a store directory.
func isStore(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return usageError{fmt.Errorf("%s does not exist: give the directory of a store (segtool append creates one)", dir)}
	case err != nil:
		return err
	case !fi.IsDir():
		return usageError{fmt.Errorf("%s is a file, not a store's directory", dir)}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if _, ok := engine.ParseSegmentName(e.Name()); ok {
			return nil
		}
	}
	return usageError{fmt.Errorf("%s is not a store: it holds no segment files (segtool append creates a store)", dir)}
}

// AppendOptions configure Append.
type AppendOptions struct {
	Binary bool // records are length-prefixed (uint32 little endian) instead of lines
	Batch  int  // most records per Append (one commit); default 64
	// FlushInterval bounds how long a record waits for its batch to fill:
	// the batch is appended this long after its first record came, full
	// or not. Default 100ms.
	FlushInterval time.Duration
	// Create: make dir a store even if it holds files that are not a
	// store's. Without it, dir must be missing, empty, or a store.
	Create bool
	JSON   bool
}

// namedReader is an input of Append, named in its errors.
type namedReader struct {
	name string
	r    io.Reader
}

// appendMaxWrite is the largest write of a store Append creates or opens
// (the engine's default for 64 MiB segments): it bounds one batch.
const appendMaxWrite = 4 << 20

// errStopped ends the input reader of an Append that failed.
var errStopped = errors.New("append stopped")

// Append appends the records read from each input to the store in dir and
// prints their offsets, one per line, as each batch is durable. It creates
// the store when the first record arrives (if dir is missing or empty,
// or with Create): an input without records creates nothing. A batch is
// appended when it holds Batch records, FlushInterval after its first
// record, when the next record would not fit in one write, and at the
// end of the input.
func Append(out, errOut io.Writer, dir string, inputs []namedReader, opts AppendOptions) error {
	if opts.Batch <= 0 {
		opts.Batch = 64
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 100 * time.Millisecond
	}
	created, err := checkAppendDir(dir, opts.Create)
	if err != nil {
		return err
	}
	recs := make(chan []byte, opts.Batch)
	stop := make(chan struct{})
	defer close(stop)
	var readErr error // set before recs is closed
	go func() {
		defer close(recs)
		for _, in := range inputs {
			readErr = readRecords(in, opts.Binary, func(rec []byte) error {
				select {
				case recs <- rec:
					return nil
				case <-stop:
					return errStopped
				}
			})
			if readErr != nil {
				return
			}
		}
	}()

	var l *engine.Log
	w := bufio.NewWriter(out)
	var batch [][]byte
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	commit := func() error {
		timer.Stop()
		if len(batch) == 0 {
			return nil
		}
		first, err := l.Append(batch...)
		if err != nil {
			return fmt.Errorf("appending %d records to %s: %w (they were not appended; the offsets printed before were)", len(batch), dir, err)
		}
		for i := range batch {
			if opts.JSON {
				fmt.Fprintf(w, "{\"offset\":%d}\n", first+uint64(i))
			} else {
				fmt.Fprintln(w, first+uint64(i))
			}
		}
		batch = batch[:0]
		return w.Flush()
	}
	for {
		select {
		case <-timer.C:
			if err := commit(); err != nil {
				return errors.Join(err, l.Close())
			}
		case rec, ok := <-recs:
			if !ok { // the input is done (or failed: the records before the failure go in first)
				if l == nil {
					if readErr == nil {
						fmt.Fprintf(errOut, "segtool: no records in the input: nothing appended, %s not changed\n", dir)
					}
					return readErr
				}
				return errors.Join(commit(), l.Close(), readErr)
			}
			if l == nil {
				eopts := engine.DefaultOptions()
				eopts.MaxWrite, eopts.Logger = appendMaxWrite, quietLogger
				if l, err = createStore(dir, created, eopts); err != nil {
					return err
				}
			}
			blk := int64(l.Storage().Alignment.Block)
			if !wal.BatchFits([][]byte{rec}, appendMaxWrite, blk) {
				err := usageError{fmt.Errorf("a record of %d bytes does not fit in one write of the store (%d bytes with its header): split it", len(rec), appendMaxWrite)}
				return errors.Join(commit(), l.Close(), err)
			}
			if !wal.BatchFits(append(batch, rec), appendMaxWrite, blk) {
				if err := commit(); err != nil {
					return errors.Join(err, l.Close())
				}
			}
			batch = append(batch, rec)
			if len(batch) == 1 {
				timer.Reset(opts.FlushInterval)
			}
			if len(batch) == opts.Batch {
				if err := commit(); err != nil {
					return errors.Join(err, l.Close())
				}
			}
		}
	}
}

// checkAppendDir says whether append may make dir a store: a store, a
// missing directory (whose parent exists), an empty one, or, with create,
// any directory. created reports that dir holds nothing yet (what a failed
// creation leaves is removed).
func checkAppendDir(dir string, create bool) (created bool, err error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		parent := filepath.Dir(filepath.Clean(dir))
		if pfi, err := os.Stat(parent); err != nil || !pfi.IsDir() {
			return false, usageError{fmt.Errorf("%s: its parent directory %s does not exist: create it first", dir, parent)}
		}
		return true, nil
	}
	if err != nil {
		return false, err
	}
	if !fi.IsDir() {
		return false, usageError{fmt.Errorf("%s is a file, not a directory: give a store's directory, or a new or empty one", dir)}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	if len(ents) == 0 {
		return true, nil
	}
	if isStore(dir) == nil || create {
		return false, nil
	}
	return false, usageError{fmt.Errorf("%s holds %s but no segstore segment: it is not a store; give a new or empty directory, or --create to make it one anyway", dir, plural(len(ents), "file"))}
}

// createStore opens the store in dir for writing with opts, creating it;
// if that fails where there was nothing (fresh: dir missing or empty), it
// removes what the attempt created.
func createStore(dir string, fresh bool, opts engine.Options) (*engine.Log, error) {
	_, statErr := os.Stat(dir)
	existed := statErr == nil
	l, err := engine.Open(dir, opts)
	if err != nil && fresh {
		if existed {
			ents, _ := os.ReadDir(dir)
			for _, e := range ents {
				os.RemoveAll(filepath.Join(dir, e.Name()))
			}
		} else {
			os.RemoveAll(dir)
		}
	}
	return l, err
}

// readRecords calls fn with each record of in: a line (without its
// newline), or a length-prefixed record. Errors say which record of the
// input failed; the records before it are appended. A malformed input is
// a usage error.
func readRecords(in namedReader, binaryRecs bool, fn func([]byte) error) error {
	r := bufio.NewReaderSize(in.r, 1<<20)
	for k := 1; ; k++ {
		var rec []byte
		if binaryRecs {
			var n [4]byte
			if _, err := io.ReadFull(r, n[:]); err == io.EOF {
				return nil
			} else if err != nil {
				return inputError(err, fmt.Errorf("%s, record %d: reading its 4-byte length: %w (--binary wants a uint32 little-endian length, then that many bytes; the records before it were appended)", in.name, k, err))
			}
			size := binary.LittleEndian.Uint32(n[:])
			if size > wal.MaxRecordSize {
				return usageError{fmt.Errorf("%s, record %d: length %d is over the %d-byte maximum (is the input really length-prefixed? the records before it were appended)", in.name, k, size, wal.MaxRecordSize)}
			}
			rec = make([]byte, size)
			if _, err := io.ReadFull(r, rec); err != nil {
				return inputError(err, fmt.Errorf("%s, record %d: reading its %d bytes: %w (the input ends inside it; the records before it were appended)", in.name, k, size, err))
			}
		} else {
			line, err := r.ReadBytes('\n')
			if len(line) == 0 && err == io.EOF {
				return nil
			}
			if err != nil && err != io.EOF {
				return fmt.Errorf("%s, line %d: %w (the lines before it were appended)", in.name, k, err)
			}
			rec = bytes.TrimSuffix(line, []byte{'\n'})
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

// inputError is err, a usage error when the input ended too soon (it is
// not what --binary takes) and not when reading it failed.
func inputError(cause, err error) error {
	if errors.Is(cause, io.ErrUnexpectedEOF) || errors.Is(cause, io.EOF) {
		return usageError{err}
	}
	return err
}

// CatOptions configure Cat.
type CatOptions struct {
	From   int64     // first offset; -1 for the log's start
	At     time.Time // if set, start at the first record appended at or after it
	Count  int       // records to print; 0 for all
	Format string    // text (offset, tab, record), raw (the record), hex or json
	// Follow: at the end of the log, wait for the writer's next records
	// (engine.KeepRefreshed, at least every Poll, default 250ms) until ctx
	// is done or Count are printed, like tail -f.
	Follow bool
	Poll   time.Duration
}

// Cat prints records of the store in dir, one a line: as text (offset,
// tab, the record's bytes), raw (the record's bytes alone), hex (offset,
// tab, hex bytes) or JSON (one object).
func Cat(ctx context.Context, out io.Writer, dir string, opts CatOptions) error {
	if opts.Format == "" {
		opts.Format = "text"
	}
	switch opts.Format {
	case "text", "raw", "hex", "json":
	default:
		return usageError{fmt.Errorf("--format %q: want text, raw, hex or json", opts.Format)}
	}
	l, err := openStore(dir, false)
	if err != nil {
		return err
	}
	defer l.Close()
	from := uint64(max(opts.From, 0))
	if opts.From < 0 {
		from = l.StartOffset()
	}
	if !opts.At.IsZero() {
		if from, err = l.SeekTime(opts.At); err != nil {
			return err
		}
	}
	if err := inLog(from, l.StartOffset(), l.DurableOffset()); err != nil {
		return err
	}
	var wait func(from uint64) error // with Follow: until the log holds from
	if opts.Follow {
		var stop func()
		wait, stop = follow(ctx, l, opts.Poll)
		defer stop()
	}
	w := bufio.NewWriter(out)
	defer w.Flush()
	enc := json.NewEncoder(w)
	left := opts.Count // 0: no limit
	for {
		it := l.NewIterator(from)
		for (opts.Count == 0 || left > 0) && it.Next() {
			rec := it.Record()
			switch opts.Format {
			case "text":
				fmt.Fprintf(w, "%d\t%s\n", it.Offset(), rec)
			case "raw":
				w.Write(rec)
				w.WriteByte('\n')
			case "hex":
				fmt.Fprintf(w, "%d\t%s\n", it.Offset(), hex.EncodeToString(rec))
			case "json":
				enc.Encode(recordJSON(it.Offset(), it.Time(), rec))
			}
			from, left = it.Offset()+1, left-1
		}
		err := it.Err()
		it.Close()
		if err != nil || !opts.Follow || (opts.Count > 0 && left == 0) {
			return err
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if err := wait(from); err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: done following
			}
			return fmt.Errorf("following %s: %w", dir, err)
		}
	}
}

// inLog refuses a start offset outside the log's records [start, end]
// (end itself: nothing yet, what --follow waits for).
func inLog(from, start, end uint64) error {
	if from < start || from > end {
		return usageError{fmt.Errorf("offset %d is outside the log's records [%d, %d): give --from in that range", from, start, end)}
	}
	return nil
}

// follow keeps the read-only log l refreshed until ctx is done or stop is
// called; wait returns once l holds offset from, or with the refresher's
// error (or ctx's).
func follow(ctx context.Context, l *engine.Log, poll time.Duration) (wait func(from uint64) error, stop func()) {
	if poll <= 0 {
		poll = 250 * time.Millisecond
	}
	ctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cancel(l.KeepRefreshed(ctx, poll))
	}()
	wait = func(from uint64) error {
		if err := l.Wait(ctx, from); err != nil {
			return context.Cause(ctx)
		}
		return nil
	}
	return wait, func() { cancel(nil); <-done }
}

// recordJSON is a record as JSON: its bytes as a string when they are
// UTF-8, else base64 (encoding/json's []byte).
func recordJSON(off uint64, t time.Time, rec []byte) any {
	type text struct {
		Offset uint64    `json:"offset"`
		Time   time.Time `json:"time"`
		Size   int       `json:"size"`
		Value  string    `json:"value"`
	}
	type binary struct {
		Offset uint64    `json:"offset"`
		Time   time.Time `json:"time"`
		Size   int       `json:"size"`
		Base64 []byte    `json:"value_base64"`
	}
	if utf8.Valid(rec) {
		return text{off, t.UTC(), len(rec), string(rec)}
	}
	return binary{off, t.UTC(), len(rec), rec}
}

// InspectReport is what Inspect prints.
type InspectReport struct {
	Dir      string               `json:"dir"`
	Storage  engine.StorageInfo   `json:"storage"`
	Segments []engine.SegmentInfo `json:"segments"`
	Start    uint64               `json:"start"`
	End      uint64               `json:"end"`
	Records  uint64               `json:"records"`
	Bytes    int64                `json:"bytes"`
	Recovery engine.Recovery      `json:"last_open"`
	Writer   engine.WriterInfo    `json:"writer"` // the process writing the store, if any
	Warnings []string             `json:"warnings"`
	// Replication: set when the store is a follower (segtool replicate).
	Replication *ReplicationStatus `json:"replication,omitempty"`
}

// MarshalJSON writes the report in snake_case throughout, as every
// segtool document is, with [] for empty lists.
func (r InspectReport) MarshalJSON() ([]byte, error) {
	type alignment struct {
		Memory int    `json:"memory"`
		Offset int    `json:"offset"`
		Block  int    `json:"block"`
		Source string `json:"source"`
	}
	type storage struct {
		Direct     bool      `json:"direct"`
		Filesystem string    `json:"filesystem"`
		Alignment  alignment `json:"alignment"`
	}
	type segment struct {
		Base         uint64     `json:"base"`
		Next         uint64     `json:"next"`
		Records      uint64     `json:"records"`
		Bytes        int64      `json:"bytes"`
		DataEnd      int64      `json:"data_end"`
		Sealed       bool       `json:"sealed"`
		File         string     `json:"file"`
		FirstRecord  *time.Time `json:"first_record,omitempty"`
		SealedAt     *time.Time `json:"sealed_at,omitempty"`
		IndexEntries int        `json:"index_entries"`
		FooterCRC    string     `json:"footer_crc32c,omitempty"`
	}
	type torn struct {
		Position int64  `json:"position"`
		Bytes    int64  `json:"bytes"`
		Reason   string `json:"reason"`
	}
	type recovery struct {
		Segments          int      `json:"segments"`
		SealedByFooter    int      `json:"sealed_trusted_by_footer"`
		SealedByManifest  int      `json:"sealed_trusted_by_manifest"`
		Resealed          []uint64 `json:"resealed"`
		FinishedSeals     []uint64 `json:"finished_seals"`
		RebuiltFooters    []uint64 `json:"rebuilt_footers"`
		RemovedIncomplete []uint64 `json:"removed_incomplete"`
		ActiveFrames      int      `json:"active_frames"`
		ActiveRead        int64    `json:"active_bytes_read"`
		ActiveScanMicros  int64    `json:"active_scan_us"`
		TornTail          *torn    `json:"torn_tail,omitempty"`
		CleanEnd          bool     `json:"clean_end"`
		Microseconds      int64    `json:"duration_us"`
	}
	list := func(v []uint64) []uint64 { return append([]uint64{}, v...) }
	st, rec := r.Storage, r.Recovery
	doc := struct {
		Dir         string             `json:"dir"`
		Storage     storage            `json:"storage"`
		Segments    []segment          `json:"segments"`
		Start       uint64             `json:"start"`
		End         uint64             `json:"end"`
		Records     uint64             `json:"records"`
		Bytes       int64              `json:"bytes"`
		Recovery    recovery           `json:"last_open"`
		Writer      engine.WriterInfo  `json:"writer"`
		Warnings    []string           `json:"warnings"`
		Replication *ReplicationStatus `json:"replication,omitempty"`
	}{Dir: r.Dir, Storage: storage{st.Direct, st.Filesystem, alignment{st.Alignment.Memory, st.Alignment.Offset, st.Alignment.Block, st.Alignment.Source}},
		Segments: []segment{}, Start: r.Start, End: r.End, Records: r.Records, Bytes: r.Bytes,
		Recovery: recovery{Segments: rec.Segments, SealedByFooter: rec.Sealed, SealedByManifest: rec.Deferred, Resealed: list(rec.Resealed),
			FinishedSeals: list(rec.FinishedSeals), RebuiltFooters: list(rec.RebuiltFooters), RemovedIncomplete: list(rec.RemovedIncomplete),
			ActiveFrames: rec.ActiveFrames, ActiveRead: rec.ActiveRead, ActiveScanMicros: rec.ActiveScan.Microseconds(), CleanEnd: rec.CleanEnd, Microseconds: rec.Duration.Microseconds()},
		Writer: r.Writer, Warnings: append([]string{}, r.Warnings...), Replication: r.Replication}
	if t := rec.Torn; t != nil {
		doc.Recovery.TornTail = &torn{t.Pos, t.Bytes, t.Reason}
	}
	for _, s := range r.Segments {
		seg := segment{Base: s.Base, Next: s.Next, Records: s.Next - s.Base, Bytes: s.Bytes, DataEnd: s.DataEnd, Sealed: s.Sealed, File: s.File, IndexEntries: s.IndexEntries}
		if s.Next > s.Base {
			t := s.FirstTime.UTC()
			seg.FirstRecord = &t
		}
		if s.Sealed {
			t := s.SealedAt.UTC()
			seg.SealedAt, seg.FooterCRC = &t, fmt.Sprintf("%08x", s.FooterCRC)
		}
		doc.Segments = append(doc.Segments, seg)
	}
	return json.Marshal(doc)
}

// Inspect prints the segments of the store in dir, totals, what opening it
// found, and health warnings. It opens read-only and reads each sealed
// segment's footer (for its index).
func Inspect(out io.Writer, dir string, asJSON bool) error {
	l, err := openStore(dir, false)
	if err != nil {
		return err
	}
	defer l.Close()
	for _, s := range l.Segments() { // load lazily trusted footers, for the index sizes
		v, err := l.OpenSegment(s.Base)
		if err != nil {
			return err
		}
		v.Close()
	}
	r := InspectReport{Dir: dir, Storage: l.Storage(), Segments: l.Segments(), Start: l.StartOffset(), End: l.DurableOffset(),
		Recovery: l.Stats().LastOpenRecovery, Writer: l.Writer(), Replication: readReplication(dir)}
	r.Records = r.End - r.Start
	for _, s := range r.Segments {
		r.Bytes += s.Bytes
	}
	if !r.Storage.Direct {
		r.Warnings = append(r.Warnings, "files are read through the page cache (buffered fallback), not O_DIRECT")
	}
	if r.Recovery.Torn != nil {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the last segment has a torn tail at byte %d (%d bytes): a read-write open cuts it", r.Recovery.Torn.Pos, r.Recovery.Torn.Bytes))
	}
	if len(r.Recovery.RebuiltFooters) > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("damaged footers in segments %v: a read-write open rebuilds them", r.Recovery.RebuiltFooters))
	}
	if asJSON {
		return writeReport(out, r)
	}
	fmt.Fprintf(out, "store %s: %s, offsets [%d, %d) (%s), %d bytes\n", dir, plural(len(r.Segments), "segment"), r.Start, r.End, plural(int(r.Records), "record"), r.Bytes)
	fmt.Fprintf(out, "storage: direct=%v filesystem=%s alignment: %d-byte offsets, %d-byte memory, %d-byte blocks (from %s)\n",
		r.Storage.Direct, r.Storage.Filesystem, r.Storage.Alignment.Offset, r.Storage.Alignment.Memory, r.Storage.Alignment.Block, r.Storage.Alignment.Source)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "base\tlast\trecords\tbytes\tsealed\tfirst record\tsealed at\tindex entries\tfile\t")
	for _, s := range r.Segments {
		last, sealedAt, first := "-", "-", "-"
		if s.Next > s.Base {
			last, first = fmt.Sprint(s.Next-1), s.FirstTime.UTC().Format(timeFormat)
		}
		if s.Sealed {
			sealedAt = s.SealedAt.UTC().Format(timeFormat)
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%v\t%s\t%s\t%d\t%s\t\n", s.Base, last, s.Next-s.Base, s.Bytes, s.Sealed, first, sealedAt, s.IndexEntries, s.File)
	}
	tw.Flush()
	rec := r.Recovery
	fmt.Fprintf(out, "open: %d sealed segments trusted (%d through their footers, %d through the manifest), last segment scanned: %d frames\n",
		rec.Sealed+rec.Deferred, rec.Sealed, rec.Deferred, rec.ActiveFrames)
	if !rec.CleanIndex && rec.Segments > 0 {
		fmt.Fprintf(out, "recovery: the last segment's scan read %d bytes in %s (it stops at the segment's high-water mark)\n", rec.ActiveRead, rec.ActiveScan.Round(time.Microsecond))
	}
	switch w := r.Writer; {
	case w.Published:
		fmt.Fprintf(out, "writer: another process, appends acknowledged below offset %d (shown here: up to there)\n", w.Acknowledged)
	case w.Live:
		fmt.Fprintln(out, "writer: another process (it publishes no acknowledged end: what is on disk is shown)")
	default:
		fmt.Fprintln(out, "writer: none")
	}
	if rp := r.Replication; rp != nil {
		fmt.Fprintln(out, rp)
	}
	for _, w := range r.Warnings {
		fmt.Fprintln(out, "warning:", w)
	}
	return nil
}

// VerifyOptions configure Verify.
type VerifyOptions struct {
	JSON     bool
	Progress io.Writer // where a progress bar goes; nil for none
	Verbose  bool      // each problem with its explanation
}

// Verify checks every frame and footer of the store in dir and prints a
// report; it returns an error wrapping ErrDamage if it found any. When
// ctx is done first (Ctrl-C) it says how far it got on errOut and returns
// errInterrupted.
func Verify(ctx context.Context, out, errOut io.Writer, dir string, opts VerifyOptions) error {
	if err := isStore(dir); err != nil {
		return err
	}
	var done, total atomic.Int64
	vo := engine.VerifyOptions{}
	var bar *progressbar.ProgressBar
	vo.Progress = func(d, t int64) {
		done.Store(d)
		total.Store(t)
		if opts.Progress == nil {
			return
		}
		if bar == nil {
			bar = progressbar.NewOptions64(t, progressbar.OptionSetWriter(opts.Progress), progressbar.OptionShowBytes(true),
				progressbar.OptionSetDescription("verifying"), progressbar.OptionClearOnFinish())
		}
		bar.Set64(d)
	}
	var r *engine.VerifyReport
	err := interruptible(ctx, func() (err error) { r, err = engine.Verify(dir, vo); return err })
	if errors.Is(err, errInterrupted) {
		pct := 0.0
		if t := total.Load(); t > 0 {
			pct = 100 * float64(done.Load()) / float64(t)
		}
		fmt.Fprintf(errOut, "\nverify interrupted at %.0f%% (%d of %d bytes read): no verdict\n", pct, done.Load(), total.Load())
		return err
	}
	if err != nil {
		return err
	}
	if r.Problems == nil {
		r.Problems = []engine.Problem{}
	}
	if opts.JSON {
		if err := writeReport(out, r); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "%s, %s, %s, offsets [%d, %d), %d bytes read\n",
			plural(r.Segments, "segment")+fmt.Sprintf(" (%d sealed)", r.Sealed), plural(int(r.Frames), "frame"), plural(int(r.Records), "record"), r.Start, r.End, r.Bytes)
		for _, p := range r.Problems {
			fmt.Fprintln(out, "problem:", problemLine(p))
			if opts.Verbose {
				fmt.Fprintln(out, "  why:", tidy(p.Detail))
			}
		}
		if r.TailInFlight {
			fmt.Fprintln(out, "note: a writer holds the store; bytes after the last segment's records were taken for an append in flight")
		}
		if r.Clean() {
			fmt.Fprintln(out, "clean: every checksum, footer and index entry verified")
		}
	}
	if !r.Clean() {
		why := ""
		if !opts.Verbose && !opts.JSON {
			why = "; --verbose says why each is a problem"
		}
		return fmt.Errorf("%w: %s in %s (segtool repair %s says which a crash explains and can be repaired%s)", ErrDamage, plural(len(r.Problems), "problem"), dir, dir, why)
	}
	return nil
}

// problemLine is one problem verify found, with the first clause of its
// explanation (Problem.Detail, shown whole with --verbose).
func problemLine(p engine.Problem) string {
	fix := "not repairable without losing records"
	if p.Repairable {
		fix = "repairable: segtool repair --apply"
	}
	return fmt.Sprintf("segment %d (%s) at byte %d: %s: %s (%s)", p.Segment, p.File, p.Position, p.Kind, shortDetail(p.Detail), fix)
}

// detailWhere matches the file and position a problem's detail repeats.
var detailWhere = regexp.MustCompile(`^corruption in .* \(segment \d+\) at byte \d+: `)

// shortDetail is a problem's explanation without what the problem line
// already says (file, position) and without its parenthesized advice.
func shortDetail(detail string) string {
	d := detailWhere.ReplaceAllString(tidy(detail), "")
	if i := strings.Index(d, " ("); i > 0 {
		d = d[:i]
	}
	return d
}

// plural is "1 segment", "2 segments".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// timeFormat prints times in tables: UTC, milliseconds.
const timeFormat = "2006-01-02T15:04:05.000Z"

// RepairOptions configure Repair.
type RepairOptions struct {
	Apply bool // make the repairs; otherwise only say what they would be
	JSON  bool
}

// RepairReport is what Repair found and did.
type RepairReport struct {
	Problems []engine.Problem `json:"problems"`
	Actions  []string         `json:"actions"`
	Applied  bool             `json:"applied"`
	KeptIn   string           `json:"damaged_files_kept_in,omitempty"`
	After    []engine.Problem `json:"problems_after,omitempty"`
}

// Repair finds damage with engine.Verify and repairs what a crash can
// explain: it cuts a torn tail, rebuilds a damaged footer, seals a segment
// left unsealed. It does so by opening the log read-write with
// engine.Options.VerifyOnOpen (every footer read), after copying each damaged file
// aside into DIR/damaged-TIME/. Damage inside the records, or records
// missing between segments, is never repaired: that would drop data in
// the middle of the log. Without Apply it only prints what it would do.
func Repair(out io.Writer, dir string, opts RepairOptions) error {
	if err := isStore(dir); err != nil {
		return err
	}
	v, err := engine.Verify(dir, engine.VerifyOptions{})
	if err != nil {
		return err
	}
	r := RepairReport{Problems: append([]engine.Problem{}, v.Problems...), Actions: []string{}}
	var unrepairable []engine.Problem
	for _, p := range v.Problems {
		switch {
		case !p.Repairable:
			unrepairable = append(unrepairable, p)
			r.Actions = append(r.Actions, fmt.Sprintf("leave %s as it is: %s at byte %d cannot be repaired without dropping records", filepath.Base(p.File), p.Kind, p.Position))
		case p.Kind == engine.ProblemTornTail:
			r.Actions = append(r.Actions, fmt.Sprintf("cut the torn tail of %s at byte %d", filepath.Base(p.File), p.Position))
		case p.Kind == engine.ProblemFooter:
			r.Actions = append(r.Actions, fmt.Sprintf("rebuild the footer of %s from its records", filepath.Base(p.File)))
		case p.Kind == engine.ProblemUnsealed:
			r.Actions = append(r.Actions, fmt.Sprintf("seal %s (write its footer)", filepath.Base(p.File)))
		case p.Kind == engine.ProblemManifest:
			r.Actions = append(r.Actions, "write MANIFEST anew from the segments' footers")
		case p.Kind == engine.ProblemUnfinishedSeal:
			r.Actions = append(r.Actions, fmt.Sprintf("finish the seal of %s (cut the zeros after its footer at byte %d)", filepath.Base(p.File), p.Position))
		}
	}
	var applyErr error
	if opts.Apply && len(v.Problems) > 0 {
		if len(unrepairable) > 0 {
			applyErr = fmt.Errorf("%w: %d problems cannot be repaired without dropping records (the first: %v); nothing was changed", ErrDamage, len(unrepairable), unrepairable[0])
		} else {
			r.KeptIn, applyErr = applyRepair(dir, v.Problems)
			r.Applied = applyErr == nil
			if applyErr == nil {
				after, err := engine.Verify(dir, engine.VerifyOptions{})
				if err != nil {
					return err
				}
				r.After = after.Problems
			}
		}
	}
	if opts.JSON {
		if err := writeReport(out, r); err != nil {
			return err
		}
	} else {
		if len(v.Problems) == 0 {
			fmt.Fprintln(out, "clean: nothing to repair")
		}
		verb := "would"
		if r.Applied {
			verb = "did"
		}
		for _, a := range r.Actions {
			fmt.Fprintf(out, "%s: %s\n", verb, a)
		}
		if r.KeptIn != "" {
			fmt.Fprintf(out, "the damaged files as they were are kept in %s\n", r.KeptIn)
		}
		if r.Applied {
			fmt.Fprintf(out, "after the repair: %d problems\n", len(r.After))
		} else if len(v.Problems) > 0 && !opts.Apply {
			fmt.Fprintln(out, "dry run: nothing changed; run with --apply to repair")
		}
	}
	switch {
	case applyErr != nil:
		return applyErr
	case len(unrepairable) > 0:
		return fmt.Errorf("%w: %d problems cannot be repaired without dropping records", ErrDamage, len(unrepairable))
	case len(r.After) > 0:
		return fmt.Errorf("%w: %d problems remain after the repair", ErrDamage, len(r.After))
	}
	return nil
}

// applyRepair copies the damaged files aside, then opens the log
// read-write with VerifyOnOpen: open cuts torn tails, rebuilds damaged
// footers and seals unsealed segments, each with its fsyncs.
func applyRepair(dir string, problems []engine.Problem) (string, error) {
	kept := filepath.Join(dir, "damaged-"+time.Now().UTC().Format("20060102T150405"))
	if err := os.MkdirAll(kept, 0o755); err != nil {
		return "", err
	}
	for _, p := range problems {
		if err := copyFile(p.File, filepath.Join(kept, filepath.Base(p.File))); err != nil {
			return "", fmt.Errorf("keeping a copy of %s before repairing it: %w", p.File, err)
		}
	}
	// The copies, and the directory that holds them, are durable before
	// anything is repaired.
	if err := blockdev.SyncDir(kept); err != nil {
		return "", err
	}
	if err := blockdev.SyncDir(dir); err != nil {
		return "", err
	}
	opts := engine.DefaultOptions()
	opts.Logger, opts.VerifyOnOpen = quietLogger, true
	l, err := engine.Open(dir, opts)
	if err != nil {
		return kept, err
	}
	return kept, l.Close()
}

// copyFile copies src to dst and fsyncs dst.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// DumpOptions configure Dump.
type DumpOptions struct {
	From    int64 // first offset whose frame to show; -1 for all
	Frames  int   // frames to show; 0 for all
	Records bool  // show each frame's records too (text: cut at 64 bytes; JSON: whole)
	JSON    bool  // one JSON object per segment, frame and footer line
}

// Dump shows the structure of the store in dir: each segment file's
// header, each frame (position, size, checksum, offsets, time: the batch
// boundaries) and the footer. It reads the files directly (no lock), and
// stops at the first damage, which it reports.
func Dump(out io.Writer, dir string, opts DumpOptions) error {
	if err := isStore(dir); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir) // sorted by name: by base offset
	if err != nil {
		return err
	}
	var names []string
	var bases []uint64
	for _, e := range ents {
		if base, ok := engine.ParseSegmentName(e.Name()); ok {
			names, bases = append(names, filepath.Join(dir, e.Name())), append(bases, base)
		}
	}
	w := bufio.NewWriter(out)
	defer w.Flush()
	enc := json.NewEncoder(w)
	shown := 0
	if opts.From >= 0 && uint64(opts.From) < bases[0] {
		return inLog(uint64(opts.From), bases[0], bases[0])
	}
	var end uint64 // after the last frame read
	for i, name := range names {
		if opts.From >= 0 && i+1 < len(names) && bases[i+1] <= uint64(opts.From) {
			continue // wholly below --from
		}
		more, err := dumpSegment(w, enc, name, opts, &shown, &end)
		if err != nil || !more {
			return err
		}
	}
	if opts.From >= 0 && uint64(opts.From) > end {
		w.Reset(out) // beyond the log: say so alone, as cat does
		return usageError{fmt.Errorf("offset %d is outside the log's records [%d, %d): give --from in that range", opts.From, bases[0], end)}
	}
	return nil
}

// dumpSegment shows the segment file name; end is set to the offset after
// its last frame.
func dumpSegment(w *bufio.Writer, enc *json.Encoder, name string, opts DumpOptions, shown *int, end *uint64) (more bool, err error) {
	dev, err := blockdev.Open(name, blockdev.Options{ReadOnly: true})
	if errors.Is(err, blockdev.ErrDirectIOUnsupported) {
		dev, err = blockdev.Open(name, blockdev.Options{ReadOnly: true, Buffered: true})
	}
	if err != nil {
		return false, err
	}
	defer dev.Close()
	size, _ := dev.Size()
	sc, err := wal.NewScanner(dev)
	if err != nil {
		return false, err
	}
	h := sc.Header()
	if opts.JSON {
		enc.Encode(map[string]any{"segment": filepath.Base(name), "format": h.Version, "base": h.BaseOffset, "segment_id": fmt.Sprintf("%016x", h.SegmentID),
			"created": time.Unix(0, h.Created).UTC(), "max_write": h.MaxWrite, "bytes": size})
	} else {
		fmt.Fprintf(w, "segment %s: format %d, base %d, id %016x, created %s, max write %d, %d bytes\n",
			filepath.Base(name), h.Version, h.BaseOffset, h.SegmentID, time.Unix(0, h.Created).UTC().Format(timeFormat), h.MaxWrite, size)
	}
	*end = max(*end, h.BaseOffset)
	for sc.Next() {
		f := sc.Frame()
		*end = f.First + uint64(f.Count)
		if opts.From >= 0 && f.First+uint64(f.Count) <= uint64(opts.From) {
			continue
		}
		if opts.Frames > 0 && *shown >= opts.Frames {
			return false, nil
		}
		*shown++
		if opts.JSON {
			frame := map[string]any{"frame": f.Pos, "size": f.Size, "checksum": fmt.Sprintf("%08x", f.Checksum),
				"first": f.First, "count": f.Count, "time": time.Unix(0, f.Time).UTC()}
			if opts.Records {
				recs := []any{}
				wal.Records(h.Version, f.Payload, func(i int, rec []byte) bool {
					recs = append(recs, recordJSON(f.First+uint64(i), time.Unix(0, f.Time), rec))
					return true
				})
				frame["records"] = recs
			}
			enc.Encode(frame)
		} else {
			fmt.Fprintf(w, "  frame at %d: %d bytes, crc32c %08x, offsets %d..%d (%d records), %s\n",
				f.Pos, f.Size, f.Checksum, f.First, f.First+uint64(f.Count)-1, f.Count, time.Unix(0, f.Time).UTC().Format(timeFormat))
		}
		if opts.Records && !opts.JSON {
			wal.Records(h.Version, f.Payload, func(i int, rec []byte) bool {
				shownRec := rec[:min(len(rec), 64)]
				ellipsis := ""
				if len(rec) > len(shownRec) {
					ellipsis = "…"
				}
				fmt.Fprintf(w, "    %d: %q%s (%d bytes)\n", f.First+uint64(i), shownRec, ellipsis, len(rec))
				return true
			})
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	switch foot, torn := sc.Footer(), sc.Torn(); {
	case foot != nil && opts.JSON:
		enc.Encode(map[string]any{"footer": foot.Pos, "next": foot.Next, "sealed": time.Unix(0, foot.Time).UTC(), "bytes": len(foot.Data)})
	case foot != nil:
		fmt.Fprintf(w, "  footer at %d: next offset %d, sealed %s, %d bytes of index\n", foot.Pos, foot.Next, time.Unix(0, foot.Time).UTC().Format(timeFormat), len(foot.Data))
	case torn != nil && !opts.JSON:
		fmt.Fprintf(w, "  torn tail at %d: %d bytes (%s)\n", torn.Pos, torn.Bytes, torn.Reason)
	case !opts.JSON:
		fmt.Fprintf(w, "  end of records at %d (active or unsealed)\n", sc.End())
	}
	return true, nil
}

// offsetAt is the first offset of the store in dir appended at or after t.
func offsetAt(dir string, t time.Time) (int64, error) {
	l, err := openStore(dir, false)
	if err != nil {
		return 0, err
	}
	defer l.Close()
	off, err := l.SeekTime(t)
	return int64(off), err
}
