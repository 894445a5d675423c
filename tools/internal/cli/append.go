package cli

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
)

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

func newAppendCommand() *cobra.Command {
	var o AppendOptions
	cmd := &cobra.Command{
		Use:   "append DIR [FILE...]",
		Short: "Append records from stdin or files (one per line, or length-prefixed with --binary); print their offsets as they are durable",
		Long: "Append records from stdin or files to the store in DIR, creating it if DIR is missing or empty (or, with --create,\n" +
			"a directory that holds other files). Records are committed in batches: a batch is appended (durable, one fdatasync)\n" +
			"when it holds --batch records, when --flush-interval has passed since its first record, when the next record\n" +
			"would not fit in one write, and at the end of the input. Each record's offset is printed once it is durable.",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError{errors.New("want the store's directory, then optional input files")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			inputs := []namedReader{{"stdin", cmd.InOrStdin()}}
			if len(args) > 1 {
				inputs = nil
				for _, name := range args[1:] {
					f, err := os.Open(name)
					if err != nil {
						return usageError{fmt.Errorf("input file: %w", err)}
					}
					defer f.Close()
					inputs = append(inputs, namedReader{name, f})
				}
			}
			return Append(cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], inputs, o)
		},
	}
	cmd.Flags().BoolVar(&o.Binary, "binary", false, "records are a uint32 little-endian length and that many bytes")
	cmd.Flags().IntVar(&o.Batch, "batch", 64, "most records per append (one durable commit)")
	cmd.Flags().DurationVar(&o.FlushInterval, "flush-interval", 100*time.Millisecond, "longest a record waits for its batch to fill before it is appended")
	cmd.Flags().BoolVar(&o.Create, "create", false, "make DIR a store even if it holds other files")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print {\"offset\": N} lines")
	bound(cmd, "1", "", "batch")
	bound(cmd, "1ms", "", "flush-interval")
	return cmd
}
