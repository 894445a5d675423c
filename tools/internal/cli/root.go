package cli

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/wal"
)

// NewRootCommand returns the segtool command tree writing to out and errOut.
func NewRootCommand(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "segtool",
		Short: "segtool inspects, verifies and exercises segstore logs",
		Long: "segtool inspects, verifies, repairs, serves and replicates segstore logs, and benchmarks them.\n\n" +
			"Commands that only read (cat, dump, inspect, verify, serve --read-only) open a store without its lock,\n" +
			"beside a live writer. Every command that prints data has --json.\n\n" + exitStatusHelp(),
		Version:           version(),
		SilenceUsage:      true,
		SilenceErrors:     true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return validateFlags(cmd) },
	}
	root.SetOut(out)
	root.SetErr(errOut)
	root.SetVersionTemplate("segtool {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.PersistentFlags().Bool("verbose", false, "on failure, print the whole chain of causes")
	root.AddCommand(newQuickstartCommand(), newBenchCommand())
	root.AddCommand(newAppendCommand(), newCatCommand(), newInspectCommand(), newVerifyCommand(errOut), newRepairCommand(), newDumpCommand(),
		newServeCommand(), newReplicateCommand(), newPromoteCommand())
	// An unknown command is a usage error too.
	root.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usageError{fmt.Errorf("unknown command %q", args[0])}
		}
		return nil
	}
	root.RunE = func(cmd *cobra.Command, _ []string) error { return cmd.Help() }
	return root
}

// exitStatusHelp is the exit status table of segtool --help.
func exitStatusHelp() string {
	var b strings.Builder
	b.WriteString("Exit status (every command):\n")
	for _, e := range exitStatuses {
		fmt.Fprintf(&b, "  %3d  %s\n", e.Code, e.Meaning)
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// version is segtool's version: the module version and VCS revision it
// was built from, its Go toolchain, and the newest wal format it reads.
func version() string {
	v, rev, dirty := "(devel)", "", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch {
			case s.Key == "vcs.revision" && len(s.Value) >= 12:
				rev = " commit " + s.Value[:12]
			case s.Key == "vcs.modified" && s.Value == "true":
				dirty = " (modified)"
			}
		}
	}
	return fmt.Sprintf("%s%s%s, %s %s/%s, wal format %d", v, rev, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH, wal.Version)
}

// noArgs refuses arguments, as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments, got %q", cmd.CommandPath(), args[0])}
	}
	return nil
}

// oneDir accepts exactly one argument, the store's directory.
func oneDir(_ *cobra.Command, args []string) error {
	if len(args) != 1 {
		return usageError{fmt.Errorf("want one argument, the store's directory; got %d", len(args))}
	}
	return nil
}
