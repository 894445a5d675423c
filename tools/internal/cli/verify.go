package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/segstore/segstore/engine"
)

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
	switch {
	case p.Repairable:
		fix = "repairable: segtool repair --apply"
	case p.Kind == engine.ProblemVersion:
		fix = "not damage: check it with a newer segtool"
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

func newVerifyCommand(errOut io.Writer) *cobra.Command {
	var o VerifyOptions
	var quiet bool
	cmd := &cobra.Command{
		Use:   "verify DIR",
		Short: "Check every checksum, footer and index entry; exit 0 clean, 1 damage",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			if f, ok := errOut.(*os.File); ok && !quiet && term.IsTerminal(int(f.Fd())) {
				o.Progress = errOut
			}
			o.Verbose, _ = cmd.Flags().GetBool("verbose")
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return Verify(ctx, cmd.OutOrStdout(), cmd.ErrOrStderr(), args[0], o)
		},
	}
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print one JSON document")
	cmd.Flags().BoolVar(&quiet, "quiet", false, "no progress bar")
	return cmd
}
