package tools

import (
	"fmt"
	"io"
	"strconv"
	"strings"

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
	root.AddCommand(newBenchCommand())
	return root
}

func newBenchCommand() *cobra.Command {
	bench := &cobra.Command{Use: "bench", Short: "Benchmarks of the store's paths"}
	var eo ExportBenchOptions
	var size string
	export := &cobra.Command{
		Use:   "export",
		Short: "Send one sealed segment over loopback TCP by read+write, sendfile, splice and mmap+write, and compare them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			n, err := parseSize(size)
			if err != nil {
				return err
			}
			eo.Size = n
			_, err = ExportBench(cmd.OutOrStdout(), eo)
			return err
		},
	}
	export.Flags().StringVar(&size, "size", "1GiB", "bytes of records in the segment (units: KiB, MiB, GiB)")
	export.Flags().BoolVar(&eo.Pin, "pin", false, "pin the sender to CPU 0 and the receiver to CPU 1")
	export.Flags().BoolVar(&eo.Cold, "cold", false, "drop the page cache before each path (root only)")
	export.Flags().BoolVar(&eo.JSON, "json", false, "print one JSON document")
	export.Flags().IntVar(&eo.Runs, "runs", 3, "rounds over all paths, interleaved; figures are medians")
	export.Flags().StringVar(&eo.Dir, "dir", "", "directory to build the segment in (default: a new temporary directory)")
	bench.AddCommand(export)
	return bench
}

// parseSize parses a byte count with an optional KiB, MiB or GiB suffix.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mul    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n <= 0 {
				return 0, fmt.Errorf("segtool: size %q: want a positive number with an optional KiB, MiB or GiB suffix", s)
			}
			return n * u.mul, nil
		}
	}
	panic("unreachable: the empty suffix matches")
}
