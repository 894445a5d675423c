package cli

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBenchExport runs every export path on an 8 MiB segment: each must
// deliver exactly the file's bytes (ExportBench compares checksums) and
// report its figures.
func TestBenchExport(t *testing.T) {
	out, err := runSegtool(t, "bench", "export", "--size", "8MiB", "--runs", "1", "--json", "--dir", t.TempDir())
	require.NoError(t, err)
	var doc struct {
		SegmentBytes int64          `json:"segment_bytes"`
		Results      []ExportResult `json:"results"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	require.Greater(t, doc.SegmentBytes, int64(8<<20))
	var paths []string
	for _, r := range doc.Results {
		paths = append(paths, r.Path)
		assert.Equal(t, doc.SegmentBytes, r.Bytes)
		assert.Positive(t, r.GBps, r.Path)
		assert.Positive(t, r.SyscallsPerGiB, r.Path)
		assert.Len(t, r.Checksum, 8)
	}
	assert.Equal(t, []string{"read+write", "sendfile", "splice", "mmap+write"}, paths)
	// By construction the zero-copy paths make far fewer calls per GiB
	// than a 256 KiB read+write loop (8192 reads alone).
	assert.Less(t, doc.Results[1].SyscallsPerGiB, doc.Results[0].SyscallsPerGiB/4)
}

func TestBenchExportBadSize(t *testing.T) {
	for size, want := range map[string]string{"": "want a number of bytes", "0": "want at least 64KiB", "-5MiB": "want a number of bytes",
		"12XB": "want a number of bytes", "1.5GiB": "want a number of bytes"} {
		_, err := runSegtool(t, "bench", "export", "--size", size)
		assert.ErrorContains(t, err, want, "size %q", size)
		assert.Equal(t, ExitUsage, ExitCode(err), "size %q", size)
	}
}

func TestBenchAppendAndRead(t *testing.T) {
	var doc struct {
		Options     map[string]any `json:"options"`
		Environment BenchEnv       `json:"environment"`
		Results     []BenchResult  `json:"results"`
	}
	out, err := runSegtool(t, "bench", "append", "--duration", "200ms", "--workers", "2", "--batch", "4", "--segment-size", "1MiB", "--json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	assert.Equal(t, float64(4), doc.Options["batch"], "options in snake_case, as the results")
	assert.Contains(t, doc.Options, "record_size")
	assert.NotEmpty(t, doc.Environment.Filesystem, "where it ran is recorded")
	assert.Positive(t, doc.Environment.CPUs)
	assert.NotEmpty(t, doc.Environment.Kernel)
	require.Len(t, doc.Results, 1)
	a := doc.Results[0]
	assert.Equal(t, "append", a.Op)
	assert.Equal(t, 4*a.Ops, a.Records)
	assert.Positive(t, a.Syncs, "sync always: every append durable")
	assert.LessOrEqual(t, a.P50us, a.P99us)

	out, err = runSegtool(t, "bench", "read", "--duration", "200ms", "--segment-size", "1MiB", "--dist", "zipf", "--json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal([]byte(out), &doc), out)
	require.Len(t, doc.Results, 2)
	assert.Equal(t, "read-zipf", doc.Results[0].Op)
	assert.Positive(t, doc.Results[0].Ops)
	assert.Equal(t, "scan", doc.Results[1].Op)
	assert.Positive(t, doc.Results[1].Records)

	out, err = runSegtool(t, "bench", "read", "--duration", "100ms", "--segment-size", "1MiB")
	require.NoError(t, err)
	assert.Contains(t, out, "reads/s")
	assert.NotContains(t, out, "fsyncs", "reads have their own columns")
	assert.Regexp(t, `load [\d.]+ before, [\d.]+ after`, out)

	_, err = runSegtool(t, "bench", "append", "--sync", "sometimes")
	assert.Equal(t, 2, ExitCode(err))
	assert.ErrorContains(t, err, "want always, interval or never")
}
