package tools

import (
	"io"

	"github.com/spf13/cobra"
)

// NewRootCommand returns the segtool command tree writing to out and errOut.
func NewRootCommand(out, errOut io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "segtool",
		Short:         "segtool inspects, verifies and exercises segstore logs",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(out)
	root.SetErr(errOut)

	var qs QuickstartOptions
	quick := &cobra.Command{
		Use:   "quickstart",
		Short: "Write a log with concurrent durable appenders, reopen it, and read every record back",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return Quickstart(cmd.OutOrStdout(), qs)
		},
	}
	quick.Flags().StringVar(&qs.Dir, "dir", "", "directory for the store (default: a new temporary directory)")
	quick.Flags().IntVar(&qs.Appenders, "appenders", 8, "concurrent appenders")
	quick.Flags().IntVar(&qs.Appends, "appends", 2000, "Append calls per appender")
	quick.Flags().IntVar(&qs.Batch, "batch", 4, "records per Append")
	quick.Flags().IntVar(&qs.RecordSize, "record-size", 1024, "bytes per record (at least 16)")
	quick.Flags().Int64Var(&qs.SegmentSize, "segment-size", 16<<20, "bytes per segment file")
	quick.Flags().IntVar(&qs.Reads, "reads", 20000, "random point reads")
	root.AddCommand(quick)
	return root
}
