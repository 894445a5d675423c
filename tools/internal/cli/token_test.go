package cli

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestResolveToken: serve's and replicate's token comes from a file, the
// environment or (with a warning: ps shows it) the command line; a file
// that does not hold one token on one line is refused, saying so.
func TestResolveToken(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
		return p
	}
	for _, tc := range []struct {
		name, flag, file, env string
		want, err, warn       string
	}{
		{name: "none"},
		{name: "environment", env: "from-env", want: "from-env"},
		{name: "file", file: file("ok", "s3cret\n"), env: "from-env", want: "s3cret"},
		{name: "flag", flag: "visible", env: "from-env", want: "visible", warn: "visible to every user"},
		{name: "both", flag: "a", file: file("both", "b"), err: "give the token one way"},
		{name: "missing file", file: filepath.Join(dir, "nope"), err: "--token-file: open"},
		{name: "empty file", file: file("empty", " \n"), err: "should hold the token alone"},
		{name: "two lines", file: file("two", "a\nb\n"), err: "should hold the token alone"},
		{name: "huge file", file: file("huge", strings.Repeat("x", maxTokenFile+1)), err: "more than 4096 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tokenEnv, tc.env)
			var warn bytes.Buffer
			got, err := resolveToken(&warn, tc.flag, tc.file)
			if tc.err != "" {
				require.ErrorContains(t, err, tc.err)
				assert.Equal(t, 2, ExitCode(err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			if tc.warn == "" {
				assert.Empty(t, warn.String())
			} else {
				assert.Contains(t, warn.String(), tc.warn)
			}
		})
	}
	// The commands take the flag.
	for _, args := range [][]string{{"serve", "--token-file", filepath.Join(dir, "nope"), dir}, {"replicate", "--token-file", filepath.Join(dir, "nope"), "http://127.0.0.1:1", dir}} {
		_, err := runSegtool(t, args...)
		assert.ErrorContains(t, err, "--token-file", args[0])
		assert.Equal(t, 2, ExitCode(err), args[0])
	}
}

// TestServeAllowedHosts: serve without a token answers requests for
// localhost and the --allow-host names, and refuses other host names.
func TestServeAllowedHosts(t *testing.T) {
	dir := smallStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, &bytes.Buffer{}, []string{dir}, ServeOptions{Listen: "127.0.0.1:0", AllowedHosts: []string{"segstore.internal"}, MaxExports: 2},
			func(a string) { addr <- a })
	}()
	url := "http://" + <-addr + "/v1/logs"
	for host, code := range map[string]int{"": http.StatusOK, "localhost:7070": http.StatusOK, "segstore.internal:7070": http.StatusOK,
		"attacker.example:7070": http.StatusMisdirectedRequest} {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		require.NoError(t, err)
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, code, resp.StatusCode, host)
	}
	cancel()
	require.NoError(t, <-served)
}
