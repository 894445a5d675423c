package cli

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func runSegtool(t *testing.T, args ...string) (stdout string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := NewRootCommand(&out, &errOut)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), err
}

func TestQuickstart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	out, err := runSegtool(t, "quickstart", "--dir", dir, "--appenders", "4", "--appends", "300", "--batch", "3",
		"--record-size", "200", "--segment-size", "65536", "--reads", "500")
	require.NoError(t, err)
	for _, want := range []string{
		"store:        " + dir,
		"appended:     3600 records",
		"group commit: 1200 appends",
		"offsets [0, 3600)",
		"point reads:  500 random reads checked",
		"scan:         3600 records checked byte for byte",
		"replicated:   3600 records into " + dir + "-replica",
	} {
		assert.Contains(t, out, want)
	}

	assert.Regexp(t, `reopened:     \d+ segments \(\d+ sealed`, out, "64 KiB segments must roll")
	assert.Regexp(t, `export:       segment \d+\.seg \((\d+) bytes\) sent .* bytes sent by sendfile \d+, copied 0`, out)

	out, err = runSegtool(t, "quickstart", "--dir", dir+"-json", "--appenders", "2", "--appends", "100", "--segment-size", "65536",
		"--reads", "100", "--json")
	require.NoError(t, err)
	var rep QuickstartReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep), out)
	assert.Equal(t, int64(800), rep.Records)
	assert.Positive(t, rep.Fsyncs)
	assert.Positive(t, rep.SendfileBytes)
	assert.Equal(t, rep.ExportedBytes, rep.SendfileBytes)
	assert.Equal(t, uint64(800), rep.ReplicatedRecords)
	assert.Positive(t, rep.ReplicaSendfileBytes)

	// A second run into the same directory refuses instead of overwriting.
	_, err = runSegtool(t, "quickstart", "--dir", dir)
	assert.ErrorContains(t, err, "not empty")
}

func TestUnknownFlagIsAnError(t *testing.T) {
	_, err := runSegtool(t, "quickstart", "--no-such-flag")
	assert.ErrorContains(t, err, "unknown flag")
}
