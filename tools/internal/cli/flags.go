package cli

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Every numeric flag of every command states what it allows: a
// lower bound (and, for some, an upper one) that validateFlags checks
// before the command runs, so that no value is silently replaced by
// another. A test walks the command tree and fails on a numeric flag
// without a bound.
const (
	minAnnotation = "segtool-min" // the flag's smallest value, in the flag's own syntax
	maxAnnotation = "segtool-max" // its largest, if bounded
)

// bound sets the smallest (and, if max is not "", the largest) value of
// the named flags of cmd.
func bound(cmd *cobra.Command, min, max string, names ...string) {
	for _, name := range names {
		if err := cmd.Flags().SetAnnotation(name, minAnnotation, []string{min}); err != nil {
			panic(err) // a flag name misspelt in this file
		}
		if max != "" {
			cmd.Flags().SetAnnotation(name, maxAnnotation, []string{max})
		}
	}
}

// validateFlags checks each flag set on the command line against its
// bounds, and returns a usage error that says what is allowed.
func validateFlags(cmd *cobra.Command) error {
	var err error
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if err != nil {
			return
		}
		err = checkBounds(f)
	})
	return err
}

// checkBounds compares f's value with its annotations.
func checkBounds(f *pflag.Flag) error {
	lo, hasMin := f.Annotations[minAnnotation]
	hi, hasMax := f.Annotations[maxAnnotation]
	if !hasMin {
		return nil
	}
	v, err := flagNumber(f.Value.Type(), f.Value.String())
	if err != nil {
		return usageError{fmt.Errorf("--%s %s: %w", f.Name, f.Value, err)}
	}
	minV, _ := flagNumber(f.Value.Type(), lo[0])
	maxV := math.Inf(1)
	if hasMax {
		maxV, _ = flagNumber(f.Value.Type(), hi[0])
	}
	if v < minV || v > maxV {
		allowed := "at least " + lo[0]
		if hasMax {
			allowed = fmt.Sprintf("from %s to %s", lo[0], hi[0])
		}
		return usageError{fmt.Errorf("--%s %s: want %s", f.Name, f.Value, allowed)}
	}
	return nil
}

// flagNumber reads a numeric flag's value as a number: durations in
// nanoseconds, sizes in bytes.
func flagNumber(typ, s string) (float64, error) {
	switch typ {
	case "duration":
		d, err := time.ParseDuration(s)
		return float64(d), err
	case "size":
		n, err := parseSize(s, true)
		return float64(n), err
	}
	return strconv.ParseFloat(s, 64)
}

// numericFlag reports whether a flag's type needs a bound.
func numericFlag(typ string) bool {
	switch typ {
	case "int", "int64", "uint64", "duration", "size", "float64":
		return true
	}
	return false
}

// sizeValue is a flag of bytes: a number with an optional KiB, MiB or
// GiB suffix ("65536", "64KiB", "1GiB"). Every size flag of every
// command takes this one syntax.
type sizeValue struct{ p *int64 }

// sizeVar defines a size flag.
func sizeVar(fs *pflag.FlagSet, p *int64, name string, value int64, usage string) {
	*p = value
	fs.Var(sizeValue{p}, name, usage)
}

func (s sizeValue) Set(v string) error {
	n, err := parseSize(v, true)
	if err != nil {
		return err
	}
	*s.p = n
	return nil
}

func (s sizeValue) Type() string { return "size" }

func (s sizeValue) String() string { return formatSize(*s.p) }

// formatSize writes n bytes with the largest binary suffix that divides
// it: 64MiB, 4KiB, 1000.
func formatSize(n int64) string {
	for _, u := range []struct {
		suffix string
		mul    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.mul == 0 {
			return strconv.FormatInt(n/u.mul, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// parseSize parses a byte count with an optional B, KiB, MiB or GiB
// suffix; zero is allowed only with zero set.
func parseSize(s string, zero bool) (int64, error) {
	units := []struct {
		suffix string
		mul    int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(num, 10, 64)
			if err != nil || n < 0 || (n == 0 && !zero) || n > math.MaxInt64/u.mul {
				return 0, fmt.Errorf("size %q: want a number of bytes below 8 EiB, with an optional KiB, MiB or GiB suffix", s)
			}
			return n * u.mul, nil
		}
	}
	panic("unreachable: the empty suffix matches")
}
