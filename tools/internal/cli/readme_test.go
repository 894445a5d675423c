//go:build unix

package cli

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readmeBlock returns the ```sh blocks of README.md's section named
// heading, joined.
func readmeBlock(t *testing.T, heading string) string {
	t.Helper()
	b, err := os.ReadFile("../../../README.md")
	require.NoError(t, err)
	s := string(b)
	start := strings.Index(s, "\n## "+heading+"\n")
	require.GreaterOrEqual(t, start, 0, "README.md has no section %q", heading)
	s = s[start+1:]
	if end := strings.Index(s[3:], "\n## "); end >= 0 {
		s = s[:end+3]
	}
	var blocks []string
	for {
		open := strings.Index(s, "```sh\n")
		if open < 0 {
			break
		}
		s = s[open+len("```sh\n"):]
		end := strings.Index(s, "```\n")
		require.GreaterOrEqual(t, end, 0, "an unclosed block")
		blocks = append(blocks, s[:end])
		s = s[end:]
	}
	require.NotEmpty(t, blocks)
	return strings.Join(blocks, "")
}

// TestREADMECommands runs the README's segtool block as written, as one
// shell script stopping at the first failure, with three substitutions:
// the segtool it builds is the one TestMain built, /tmp/ is a temporary
// directory, and the listen address is a free port. So the README's
// sequence of commands cannot lie: each succeeds, in that order.
func TestREADMECommands(t *testing.T) {
	block := readmeBlock(t, "segtool")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	tmp := t.TempDir()
	bin := buildSegtool(t)
	var script []string
	for _, line := range strings.Split(block, "\n") {
		if strings.HasPrefix(line, "go build -o segtool ./tools/segtool") {
			continue // TestMain built it, the same way
		}
		line = strings.ReplaceAll(line, "/tmp/", tmp+"/")
		line = strings.ReplaceAll(line, "./segtool", bin)
		line = strings.ReplaceAll(line, "127.0.0.1:7070", addr)
		script = append(script, line)
	}
	require.Contains(t, block, "127.0.0.1:7070", "the substitutions still match the README")
	cmd := exec.Command("sh", "-e", "-x", "-c", strings.Join(script, "\n"))
	cmd.Dir = tmp
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // what it leaves running is killed with its group
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	defer syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	err = cmd.Wait()
	require.NoError(t, err, "the README's commands, run as written:\n%s", out.String())

	// The copy, promoted, holds the three records the README appended.
	assert.Contains(t, out.String(), "0\tone\n1\ttwo\n2\tthree\n", "the last command, cat of the promoted copy")
	assert.FileExists(t, filepath.Join(tmp, "copy", "00000000000000000000.seg"))
}
