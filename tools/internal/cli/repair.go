package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
)

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

func newRepairCommand() *cobra.Command {
	var o RepairOptions
	cmd := &cobra.Command{
		Use:   "repair DIR",
		Short: "Say how damage a crash explains would be repaired; with --apply, keep the damaged files aside and repair",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			return Repair(cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().BoolVar(&o.Apply, "apply", false, "make the repairs (default: a dry run)")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print one JSON document")
	return cmd
}
