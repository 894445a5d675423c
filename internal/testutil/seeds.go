// Package testutil holds the scaffolding that the tests of several
// packages share: the seeds of randomized tests, deterministic record
// generators, helpers that damage files, a bounded wait on a channel, and
// (on unix) the harness that re-executes a test binary as a child and
// kills it. It imports nothing from segstore, so every package's tests can
// use it without an import cycle.
package testutil

import (
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// LongEnv is the environment variable that turns on long runs: more
// seeds, cycles and positions in the sweeps that take a count. It is an
// environment variable rather than a flag so that `go test ./...` works
// for every package.
const LongEnv = "SEGSTORE_LONG"

// SeedEnv is the environment variable that replays one seed of a
// randomized test: SEGSTORE_SEED=N makes Seeds return N alone.
const SeedEnv = "SEGSTORE_SEED"

// Long reports whether long runs were asked for (LongEnv set to anything
// but the empty string).
func Long() bool { return os.Getenv(LongEnv) != "" }

// Seeds returns the seeds a randomized test runs: 1 to short, or 1 to long
// when Long is true, or the one seed SeedEnv names. A SeedEnv that is not
// a number fails the test.
func Seeds(t testing.TB, short, long int) []uint64 {
	t.Helper()
	if s := os.Getenv(SeedEnv); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		require.NoError(t, err, SeedEnv)
		return []uint64{n}
	}
	n := short
	if Long() {
		n = long
	}
	out := make([]uint64, n)
	for i := range out {
		out[i] = uint64(i + 1)
	}
	return out
}
