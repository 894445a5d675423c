package cli

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/engine"
)

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

func newCatCommand() *cobra.Command {
	var o CatOptions
	var since string
	cmd := &cobra.Command{
		Use:   "cat DIR",
		Short: "Print records from an offset or a time, as text (with offsets), raw, hex or JSON",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := startFlags(cmd, since, &o.From, &o.At); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Cat(ctx, cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().Int64Var(&o.From, "from", 0, "first offset (default: the log's start)")
	cmd.Flags().StringVar(&since, "since", "", "start at records appended since a duration ago (10m) or an RFC 3339 time")
	cmd.Flags().IntVar(&o.Count, "count", 0, "records to print (default: all)")
	cmd.Flags().StringVar(&o.Format, "format", "text", "text (offset, tab, record), raw (the record alone), hex or json")
	cmd.Flags().BoolVarP(&o.Follow, "follow", "f", false, "at the end, wait for new records (until interrupted or --count)")
	cmd.Flags().DurationVar(&o.Poll, "poll", 250*time.Millisecond, "with --follow, look for new records as the files change and at least this often")
	bound(cmd, "0", "", "from")
	bound(cmd, "1", "", "count")
	bound(cmd, "1ms", "", "poll")
	return cmd
}
