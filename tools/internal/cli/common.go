package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/engine"
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
	if _, bases, err := segmentFiles(dir); err != nil || len(bases) > 0 {
		return err
	}
	return usageError{fmt.Errorf("%s is not a store: it holds no segment files (segtool append creates a store)", dir)}
}

// segmentFiles lists the segment files of dir in the order of their base
// offsets (their names' order): each file's path and base.
func segmentFiles(dir string) (paths []string, bases []uint64, err error) {
	ents, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		if base, ok := engine.ParseSegmentName(e.Name()); ok {
			paths, bases = append(paths, filepath.Join(dir, e.Name())), append(bases, base)
		}
	}
	return paths, bases, nil
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

// startFlags reads --from and --since, which say where cat and dump
// start: from is -1 (the log's start) unless --from is given, and at is
// set from --since. The two do not go together.
func startFlags(cmd *cobra.Command, since string, from *int64, at *time.Time) error {
	fromSet := cmd.Flags().Changed("from")
	if fromSet && since != "" {
		return usageError{errors.New("--from and --since: give one start")}
	}
	if !fromSet {
		*from = -1
	}
	if since != "" {
		var err error
		if *at, err = parseSince(since, time.Now()); err != nil {
			return err
		}
	}
	return nil
}

// dirReportCommand is a command on one store directory whose only flag
// is --json.
func dirReportCommand(use, short string, run func(out io.Writer, dir string, asJSON bool) error) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(cmd.OutOrStdout(), args[0], asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON document")
	return cmd
}

// interruptible runs f until it returns or ctx is done (Ctrl-C): then it
// returns errInterrupted at once, leaving f to end with the process.
func interruptible(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return errInterrupted
	}
}

// parseSince reads --since: a duration before now, or an RFC 3339 time.
func parseSince(since string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(since); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, since); err == nil {
		return t, nil
	}
	return time.Time{}, usageError{fmt.Errorf("--since %q: want a positive duration (10m) or an RFC 3339 time", since)}
}
