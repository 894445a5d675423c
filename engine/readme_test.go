package engine_test

import (
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestREADMEQuotesExample: the Go code README.md opens "Using the log"
// with is the body of Example, which go test runs, so the README's code
// cannot drift from code that works.
func TestREADMEQuotesExample(t *testing.T) {
	src, err := os.ReadFile("example_test.go")
	require.NoError(t, err)
	s := string(src)
	start := strings.Index(s, "func Example() {\n")
	require.GreaterOrEqual(t, start, 0)
	s = s[start+len("func Example() {\n"):]
	end := strings.Index(s, "\t// Output:")
	require.GreaterOrEqual(t, end, 0)
	var body strings.Builder
	for _, line := range strings.Split(strings.TrimRight(s[:end], "\n"), "\n") {
		body.WriteString(strings.TrimPrefix(line, "\t") + "\n")
	}

	readme, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	r := string(readme)
	section := strings.Index(r, "\n## Using the log\n")
	require.GreaterOrEqual(t, section, 0, "README.md has no \"Using the log\" section")
	r = r[section:]
	open := strings.Index(r, "```go\n")
	require.GreaterOrEqual(t, open, 0)
	r = r[open+len("```go\n"):]
	quoted := r[:strings.Index(r, "```\n")]
	assert.Equal(t, body.String(), quoted, "README.md's snippet differs from Example in engine/example_test.go: copy the function's body")
}
