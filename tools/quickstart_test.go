package tools

import (
	"bytes"
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
	out, err := runSegtool(t, "quickstart", "--dir", dir, "--appenders", "4", "--appends", "50", "--batch", "3", "--record-size", "100")
	require.NoError(t, err)
	for _, want := range []string{
		"store:       " + dir,
		"O_DIRECT",
		"appended:    600 records",
		"group commit: 200 appends",
		"recovered:   200 frames, offsets [0, 600), clean end",
		"read back:   600 records checked byte for byte",
	} {
		assert.Contains(t, out, want)
	}

	// A second run into the same directory refuses instead of overwriting.
	_, err = runSegtool(t, "quickstart", "--dir", dir)
	assert.ErrorContains(t, err, "already exists")
}

func TestUnknownFlagIsAnError(t *testing.T) {
	_, err := runSegtool(t, "quickstart", "--no-such-flag")
	assert.ErrorContains(t, err, "unknown flag")
}
