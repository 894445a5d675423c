package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// segtoolBin is the segtool binary built once for the package's tests
// that run it as a user does (at the first such test; fuzz workers, which
// run none, do not build it). TestMain removes it.
var (
	segtoolBin  string
	segtoolOnce sync.Once
	segtoolErr  error
	binDir      string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// buildSegtool builds the binary once; later calls return the first
// call's result.
func buildSegtool(t *testing.T) string {
	t.Helper()
	segtoolOnce.Do(func() {
		if binDir, segtoolErr = os.MkdirTemp("", "segtool-test-bin-"); segtoolErr != nil {
			return
		}
		segtoolBin = filepath.Join(binDir, "segtool")
		if out, err := exec.Command("go", "build", "-o", segtoolBin, "../../segtool").CombinedOutput(); err != nil {
			segtoolErr = fmt.Errorf("building segtool: %w\n%s", err, out)
		}
	})
	require.NoError(t, segtoolErr)
	return segtoolBin
}

// result is what one run of the binary did.
type result struct {
	stdout, stderr string
	code           int
}

// runBin runs the built segtool with args and stdin in dir (the test's
// working directory if "").
func runBin(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	cmd := exec.Command(buildSegtool(t), args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return result{out.String(), errOut.String(), code}
}

// commands is every command of the tree, root first.
func commands(root *cobra.Command) []*cobra.Command {
	all := []*cobra.Command{root}
	for _, c := range root.Commands() {
		if c.Name() != "help" && c.Name() != "completion" {
			all = append(all, commands(c)...)
		}
	}
	return all
}

// TestHelpGolden: segtool --help and every command's --help are kept in
// testdata/golden/help (go test ./tools/internal/cli -update rewrites them); no flag's
// help says its default twice.
func TestHelpGolden(t *testing.T) {
	for _, c := range commands(NewRootCommand(io.Discard, io.Discard)) {
		path := strings.Fields(c.CommandPath())[1:]
		name := strings.Join(append([]string{"segtool"}, path...), "-") + ".txt"
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			code := Run(append(path, "--help"), strings.NewReader(""), &out, io.Discard)
			require.Equal(t, ExitOK, code)
			golden(t, filepath.Join("help", name), "", out.String())
			for _, line := range strings.Split(out.String(), "\n") {
				assert.LessOrEqual(t, strings.Count(line, "default"), 1, "a default said twice: %q", line)
			}
		})
	}
}

// TestEveryNumericFlagIsBounded: a numeric flag without bounds would take
// any value and might run with another; every one of every command has
// its lower bound, and its default is within its bounds.
func TestEveryNumericFlagIsBounded(t *testing.T) {
	for _, c := range commands(NewRootCommand(io.Discard, io.Discard)) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if !numericFlag(f.Value.Type()) {
				return
			}
			assert.Contains(t, f.Annotations, minAnnotation, "%s --%s has no bounds", c.CommandPath(), f.Name)
			if !strings.Contains(f.Usage, "(default: ") { // a default that means "none" says so
				assert.NoError(t, checkBounds(f), "%s --%s: its default is out of its bounds", c.CommandPath(), f.Name)
			}
		})
	}
}

// below returns a value just under a flag's lower bound (and whether
// there is one: a size or count whose bound is 0 has none).
func below(typ, min string) (string, bool) {
	n, err := flagNumber(typ, min)
	if err != nil || n <= 0 && typ != "int" && typ != "int64" {
		return "", false
	}
	switch typ {
	case "duration":
		return "0s", true
	case "size":
		return strconv.FormatInt(int64(n)-1, 10), n > 1
	}
	return strconv.FormatInt(int64(n)-1, 10), true
}

// above returns a value just over a flag's upper bound.
func above(typ, max string) string {
	n, _ := flagNumber(typ, max)
	if typ == "duration" {
		return time.Duration(n + 1).String()
	}
	return strconv.FormatInt(int64(n)+1, 10)
}

// TestFlagBoundsRefused sweeps every bounded flag of every command: a
// value just outside its bounds is refused with exit status 2 and a
// message that names the flag and what it allows, before anything runs.
func TestFlagBoundsRefused(t *testing.T) {
	dir := t.TempDir() // never written: the command must not start
	for _, c := range commands(NewRootCommand(io.Discard, io.Discard)) {
		path := strings.Fields(c.CommandPath())[1:]
		var args []string
		switch {
		case strings.Contains(c.Use, "URL DIR"):
			args = []string{"http://127.0.0.1:1", filepath.Join(dir, "copy")}
		case strings.Contains(c.Use, "DIR"):
			args = []string{filepath.Join(dir, "store")}
		}
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			var values []string
			if lo, ok := f.Annotations[minAnnotation]; ok {
				if v, ok := below(f.Value.Type(), lo[0]); ok {
					values = append(values, v)
				}
			}
			if hi, ok := f.Annotations[maxAnnotation]; ok {
				values = append(values, above(f.Value.Type(), hi[0]))
			}
			for _, v := range values {
				var errOut bytes.Buffer
				cmdline := append(append(append([]string{}, path...), args...), "--"+f.Name, v)
				code := Run(cmdline, strings.NewReader(""), io.Discard, &errOut)
				assert.Equal(t, ExitUsage, code, "%v: %s", cmdline, errOut.String())
				assert.Contains(t, errOut.String(), "--"+f.Name, "%v", cmdline)
				assert.Contains(t, errOut.String(), "want ", "%v", cmdline)
			}
		})
	}
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, ents, "a refused command created nothing")
}

// notAStore makes tmp/notstore, a directory holding one file, x.
func notAStore(t *testing.T, tmp string) string {
	t.Helper()
	dir := filepath.Join(tmp, "notstore")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "x"), []byte("x"), 0o644))
	return dir
}

// TestExitCodes: the exit status of each command for success, damage,
// usage and environment errors, as the binary exits.
func TestExitCodes(t *testing.T) {
	tmp := t.TempDir()
	clean := smallStore(t)
	damaged := smallStore(t)
	names, _ := filepath.Glob(filepath.Join(damaged, "*.seg"))
	testutil.XorByte(t, names[1], 4096+100, 0x20)
	notStore := notAStore(t, tmp)
	locked := smallStore(t)
	openWriter(t, locked)

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
	}{
		{"no command", "", nil, ExitOK},
		{"unknown command", "", []string{"nosuch"}, ExitUsage},
		{"unknown flag", "", []string{"inspect", clean, "--nosuch"}, ExitUsage},
		{"version", "", []string{"--version"}, ExitOK},
		{"append", "a\n", []string{"append", filepath.Join(tmp, "new")}, ExitOK},
		{"append to a directory that is not a store", "a\n", []string{"append", notStore}, ExitUsage},
		{"append to a locked store", "a\n", []string{"append", locked}, ExitEnvironment},
		{"append bad binary input", "\x05\x00", []string{"append", filepath.Join(tmp, "bin"), "--binary"}, ExitUsage},
		{"cat", "", []string{"cat", clean, "--count", "1"}, ExitOK},
		{"cat damaged", "", []string{"cat", damaged}, ExitData},
		{"cat out of range", "", []string{"cat", clean, "--from", "5000"}, ExitUsage},
		{"cat beside a writer", "", []string{"cat", locked, "--count", "1"}, ExitOK},
		{"dump", "", []string{"dump", clean, "--count", "1"}, ExitOK},
		{"dump damaged", "", []string{"dump", damaged}, ExitData},
		{"dump out of range", "", []string{"dump", clean, "--from", "5000"}, ExitUsage},
		{"inspect", "", []string{"inspect", clean}, ExitOK},
		{"inspect a file", "", []string{"inspect", filepath.Join(notStore, "x")}, ExitUsage},
		{"verify clean", "", []string{"verify", clean}, ExitOK},
		{"verify damaged", "", []string{"verify", damaged}, ExitData},
		{"verify missing", "", []string{"verify", filepath.Join(tmp, "missing")}, ExitUsage},
		{"repair clean", "", []string{"repair", clean}, ExitOK},
		{"repair unrepairable", "", []string{"repair", damaged, "--apply"}, ExitData},
		{"repair beside a writer, clean", "", []string{"repair", locked, "--apply"}, ExitOK}, // nothing to do, nothing opened
		{"promote a log of its own", "", []string{"promote", clean}, ExitUsage},
		{"promote a locked store", "", []string{"promote", locked}, ExitUsage},
		{"serve nothing", "", []string{"serve"}, ExitUsage},
		{"serve on an address it cannot listen on", "", []string{"serve", clean, "--read-only", "--listen", "256.0.0.1:1"}, ExitEnvironment},
		{"replicate into a non-store", "", []string{"replicate", "http://127.0.0.1:1", notStore}, ExitUsage},
		{"bench without a benchmark", "", []string{"bench"}, ExitUsage},
		{"quickstart into a non-empty directory", "", []string{"quickstart", "--dir", notStore}, ExitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runBin(t, tc.stdin, tc.args...)
			assert.Equal(t, tc.code, r.code, "stdout: %s\nstderr: %s", r.stdout, r.stderr)
			if tc.code != ExitOK {
				assert.Equal(t, 1, strings.Count(r.stderr, "\n"), "one line on stderr: %q", r.stderr)
				assert.True(t, strings.HasPrefix(r.stderr, "segtool: "), r.stderr)
			}
		})
	}
}

// TestErrorMessagesGolden keeps the key error messages, as the binary
// prints them, in testdata/golden/errors.txt: one line each, no Go package
// prefix, no word said twice, no advice about library fields.
func TestErrorMessagesGolden(t *testing.T) {
	tmp := t.TempDir()
	clean := filepath.Join(tmp, "clean")
	require.NoError(t, os.Rename(smallStore(t), clean))
	damaged := filepath.Join(tmp, "damaged")
	require.NoError(t, os.Rename(smallStore(t), damaged))
	segs, err := filepath.Glob(filepath.Join(damaged, "*.seg"))
	require.NoError(t, err)
	testutil.XorByte(t, segs[1], 4096+100, 0x20) // in the second segment
	notStore := notAStore(t, tmp)
	var b strings.Builder
	for _, tc := range []struct {
		stdin string
		args  []string
	}{
		{"", []string{"nosuch"}},
		{"", []string{"inspect", filepath.Join(tmp, "missing")}},
		{"", []string{"inspect", filepath.Join(notStore, "x")}},
		{"", []string{"inspect", notStore}},
		{"a\n", []string{"append", notStore}},
		{"a\n", []string{"append", filepath.Join(tmp, "no", "parent")}},
		{"\x05\x00\x00\x00ab", []string{"append", filepath.Join(tmp, "bin"), "--binary"}},
		{"", []string{"cat", clean, "--from", "5000"}},
		{"", []string{"cat", clean, "--count", "0"}},
		{"", []string{"cat", clean, "--since", "-10m"}},
		{"", []string{"cat", clean, "--from", "3", "--since", "10m"}},
		{"", []string{"cat", damaged}},
		{"", []string{"dump", clean, "--from", "5000"}},
		{"", []string{"dump", damaged}},
		{"", []string{"verify", damaged}},
		{"", []string{"promote", clean}},
		{"", []string{"bench", "append", "--workers", "0"}},
		{"", []string{"bench", "append", "--duration", "-1s"}},
		{"", []string{"quickstart", "--record-size", "-1"}},
	} {
		r := runBin(t, tc.stdin, tc.args...)
		fmt.Fprintf(&b, "$ segtool %s\n%s(exit %d)\n", strings.Join(tc.args, " "), r.stderr, r.code)
		assert.NotRegexp(t, packagePrefix, r.stderr, "%v", tc.args)
		assert.NotContains(t, r.stderr, "Options.", "%v: a library field", tc.args)
	}
	golden(t, "errors.txt", tmp, b.String())

	r := runBin(t, "", "cat", damaged, "--verbose")
	assert.Equal(t, ExitData, r.code)
	assert.Contains(t, r.stderr, "frame checksum", "--verbose: the whole explanation")
}

// TestMessage: the one-line rendering of errors from the layers below.
func TestMessage(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("blockdev: open: %w", &fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}), "open /x: permission denied (run as a user who may read and write the store's files)"},
		{fmt.Errorf("engine: segment import refused: engine: import: import: bad"), "segment import refused: import: bad"},
		{&blockdev.UnsupportedError{Path: "/dev/shm/s/START", FS: "tmpfs", Reason: "is not durable"}, "/dev/shm/s is on tmpfs, which is not durable: put the store on a disk-backed filesystem (ext4, xfs)"},
		{&blockdev.LockedError{Path: "/s/LOCK", PID: 42, Command: "segtool serve /s"}, "/s is being written by process 42 (segtool serve /s): stop it first, or use a command that only reads (cat, dump, inspect, verify, serve --read-only), which work beside it"},
		{fmt.Errorf("x: %w", &wal.CorruptionError{File: "/s/1.seg", Segment: 1, Position: 4096, Reason: "long story"}), "/s/1.seg (segment 1) is damaged at byte 4096; nothing damaged was printed and the file was not changed: segtool verify /s lists every problem (--verbose: the details)"},
		{fmt.Errorf("wal: write: %w", syscall.ENOSPC), "write: no space left on device (free space on the store's filesystem)"},
	} {
		assert.Equal(t, tc.want, Message(tc.err, false))
		assert.Equal(t, tc.err.Error(), Message(tc.err, true), "--verbose: the whole chain")
	}
}

// TestExitCodeClassification: errors from every layer, wrapped as the
// commands wrap them, map to the documented exit statuses.
func TestExitCodeClassification(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code int
	}{
		{nil, ExitOK},
		{usageError{errors.New("x")}, ExitUsage},
		{fmt.Errorf("%w: 1 problem", ErrDamage), ExitData},
		{fmt.Errorf("cat: %w", &wal.CorruptionError{}), ExitData},
		{fmt.Errorf("open: %w", wal.ErrVersion), ExitData},
		{fmt.Errorf("open: %w", &blockdev.LockedError{}), ExitEnvironment},
		{fmt.Errorf("open: %w", &blockdev.UnsupportedError{}), ExitEnvironment},
		{&fs.PathError{Op: "open", Path: "/x", Err: syscall.EACCES}, ExitEnvironment},
		{fmt.Errorf("read: %w", syscall.EIO), ExitEnvironment},
		{fmt.Errorf("verify: %w", errInterrupted), ExitInterrupted},
	} {
		assert.Equal(t, tc.code, ExitCode(tc.err), "%v", tc.err)
	}
}

// TestExitStatusesDocumented: segtool --help and README.md list the same
// exit statuses.
func TestExitStatusesDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../../README.md")
	require.NoError(t, err)
	var help bytes.Buffer
	require.Equal(t, ExitOK, Run([]string{"--help"}, strings.NewReader(""), &help, io.Discard))
	for _, e := range exitStatuses {
		row := fmt.Sprintf("| %d | %s |", e.Code, e.Meaning)
		assert.True(t, strings.Contains(string(readme), row), "README.md's exit status table lacks %q", row)
		assert.Contains(t, help.String(), fmt.Sprintf("%3d  %s", e.Code, e.Meaning))
	}
}

// TestAppendFlushInterval: a slow producer's line is durable, its offset
// printed and readable by cat, while append still waits for more input.
func TestAppendFlushInterval(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	cmd := exec.Command(buildSegtool(t), "append", dir, "--flush-interval", "1ms")
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	lines := bufio.NewScanner(stdout)
	for i := range 3 {
		fmt.Fprintf(stdin, "line %d\n", i)
		require.True(t, lines.Scan(), "the offset of line %d, before the input ends", i)
		assert.Equal(t, strconv.Itoa(i), lines.Text())
		r := runBin(t, "", "cat", dir, "--from", strconv.Itoa(i), "--format", "raw")
		assert.Equal(t, fmt.Sprintf("line %d\n", i), r.stdout, "durable and visible to a reader at once")
	}
	require.NoError(t, stdin.Close())
	require.NoError(t, cmd.Wait())
}

// TestAppendSplitsBatches: records whose batch would not fit in one write
// go in several, every one appended.
func TestAppendSplitsBatches(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	var in bytes.Buffer
	rec := bytes.Repeat([]byte{'r'}, 64<<10)
	for range 64 {
		binary.Write(&in, binary.LittleEndian, uint32(len(rec)))
		in.Write(rec)
	}
	r := runBin(t, in.String(), "append", dir, "--binary")
	require.Equal(t, ExitOK, r.code, r.stderr)
	assert.Equal(t, 64, strings.Count(r.stdout, "\n"))
	r = runBin(t, "", "dump", dir)
	assert.Greater(t, strings.Count(r.stdout, "frame at"), 1, "the batch of 64 was split")

	big := make([]byte, 4+appendMaxWrite)
	binary.LittleEndian.PutUint32(big, appendMaxWrite)
	r = runBin(t, string(big), "append", dir, "--binary")
	assert.Equal(t, ExitUsage, r.code)
	assert.Contains(t, r.stderr, "does not fit in one write of the store")
}

// TestAppendCreatesOnlyWhatItShould: empty input creates nothing; a
// directory holding other files is made a store only with --create.
func TestAppendCreatesOnlyWhatItShould(t *testing.T) {
	tmp := t.TempDir()
	r := runBin(t, "", "append", filepath.Join(tmp, "empty-input"))
	assert.Equal(t, ExitOK, r.code)
	assert.Contains(t, r.stderr, "no records in the input: nothing appended")
	assert.NoDirExists(t, filepath.Join(tmp, "empty-input"))

	other := filepath.Join(tmp, "other")
	require.NoError(t, os.MkdirAll(other, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(other, "notes.txt"), []byte("mine"), 0o644))
	r = runBin(t, "a\n", "append", other)
	assert.Equal(t, ExitUsage, r.code)
	assert.Contains(t, r.stderr, "--create")
	ents, _ := os.ReadDir(other)
	assert.Len(t, ents, 1, "refused: nothing written")
	r = runBin(t, "a\n", "append", other, "--create")
	assert.Equal(t, ExitOK, r.code, r.stderr)
}

// TestLockedStoreSaysWho: serve, without --read-only, becomes a store's
// writer and says so; a command that needs to write the store meanwhile
// is refused with the holder's process id and command line, and what
// works beside it.
func TestLockedStoreSaysWho(t *testing.T) {
	dir := smallStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	ready := make(chan string, 1)
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, &out, []string{dir}, ServeOptions{Listen: "127.0.0.1:0"}, func(a string) { ready <- a })
	}()
	<-ready
	assert.Contains(t, out.String(), dir+": served as its writer: other processes cannot append while serve runs")
	r := runBin(t, "a\n", "append", dir)
	assert.Equal(t, ExitEnvironment, r.code)
	assert.Contains(t, r.stderr, fmt.Sprintf("%s is being written by process %d (%s", dir, os.Getpid(), os.Args[0]))
	assert.Contains(t, r.stderr, "serve --read-only")
	cancel()
	require.NoError(t, <-served)
}

// TestQuickstartCleansUp: quickstart says where its data is and removes a
// temporary store unless --keep.
func TestQuickstartCleansUp(t *testing.T) {
	small := []string{"--appenders", "2", "--appends", "50", "--segment-size", "64KiB", "--record-size", "200", "--reads", "10"}
	for _, keep := range []bool{false, true} {
		t.Setenv("TMPDIR", t.TempDir())
		args := append([]string{"quickstart"}, small...)
		if keep {
			args = append(args, "--keep")
		}
		out, err := runSegtool(t, args...)
		require.NoError(t, err)
		m := regexp.MustCompile(`store: +(\S+)`).FindStringSubmatch(out)
		require.NotNil(t, m, out)
		if keep {
			assert.DirExists(t, m[1])
			assert.DirExists(t, m[1]+"-replica")
			assert.NotContains(t, out, "removed:")
		} else {
			assert.NoDirExists(t, filepath.Dir(m[1]))
			assert.Contains(t, out, "removed:      "+filepath.Dir(m[1]))
		}
	}
}

// TestPromoteRefusesALogOfItsOwn: promote only turns a follower into a log.
func TestPromoteRefusesALogOfItsOwn(t *testing.T) {
	dir := smallStore(t)
	before := snapshot(t, dir)
	_, err := runSegtool(t, "promote", dir)
	assert.Equal(t, ExitUsage, ExitCode(err))
	assert.ErrorContains(t, err, "never followed a leader")
	assert.Equal(t, before, snapshot(t, dir))
}

// TestVerifyInterrupted: an interrupted verify says how far it got and
// exits 130, with no verdict.
func TestVerifyInterrupted(t *testing.T) {
	dir := smallStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errOut bytes.Buffer
	err := Verify(ctx, &out, &errOut, dir, VerifyOptions{})
	assert.Equal(t, ExitInterrupted, ExitCode(err))
	assert.Regexp(t, `verify interrupted at \d+% \(\d+ of \d+ bytes read\): no verdict`, errOut.String())
	assert.NotContains(t, out.String(), "clean")
}

// TestCatAndDumpAgreeOnRange: for every start offset around the log's,
// cat and dump both run, or both refuse with exit status 2.
func TestCatAndDumpAgreeOnRange(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	_, err := runSegtoolIn(t, "a\nb\nc\n", "append", dir)
	require.NoError(t, err)
	for from := range 6 {
		_, catErr := runSegtool(t, "cat", dir, "--from", strconv.Itoa(from))
		_, dumpErr := runSegtool(t, "dump", dir, "--from", strconv.Itoa(from))
		assert.Equal(t, ExitCode(catErr), ExitCode(dumpErr), "--from %d: cat %v, dump %v", from, catErr, dumpErr)
		want := ExitOK
		if from > 3 {
			want = ExitUsage
		}
		assert.Equal(t, want, ExitCode(catErr), "--from %d", from)
	}
}

// runSegtoolIn is runSegtool with stdin.
func runSegtoolIn(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := NewRootCommand(&out, io.Discard)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// TestReplicateSaysWhatItGot: a replicate that never reached its leader
// leaves a status that inspect shows as such (not as a lag of 0); one
// that did prints what is readable, what is staged and durable, and the
// lag.
func TestReplicateSaysWhatItGot(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gone := "http://" + ln.Addr().String()
	require.NoError(t, ln.Close())
	copyDir := filepath.Join(t.TempDir(), "copy")
	errOut := &lineSignal{seen: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Replicate(ctx, io.Discard, errOut, gone, copyDir, ReplicateOptions{Name: "s"}) }()
	<-errOut.seen
	cancel()
	require.Error(t, <-done)
	out, err := runSegtool(t, "inspect", copyDir)
	require.NoError(t, err)
	assert.Contains(t, out, fmt.Sprintf(`follower of %s (log "s"): never reached the leader:`, gone))
	assert.Contains(t, out, "connection refused")
	assert.NotContains(t, out, "lag")

	leader := filepath.Join(t.TempDir(), "s")
	_, err = runSegtoolIn(t, "one\ntwo\nthree\n", "append", leader)
	require.NoError(t, err)
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	addr := make(chan string, 1)
	go Serve(ctx, io.Discard, []string{leader}, ServeOptions{Listen: "127.0.0.1:0", ReadOnly: true}, func(a string) { addr <- a })
	var report bytes.Buffer
	copyDir = filepath.Join(t.TempDir(), "copy")
	require.NoError(t, Replicate(ctx, &report, io.Discard, "http://"+<-addr, copyDir, ReplicateOptions{Name: "s", UntilCaughtUp: true}))
	assert.Regexp(t, `stopped: the copy holds offsets \[0, 0\), readable; every record below 3 is durable here \(\d+ bytes of the leader's active segment staged: readable once the leader seals it, or after segtool promote\); leader at 3, lag 0 records; 0 segments imported this run`, report.String())
	out, err = runSegtool(t, "inspect", copyDir)
	require.NoError(t, err)
	assert.Regexp(t, `readable below 0, received below 3 \(\d+ bytes of the leader's active segment staged\), leader at 3, lag 0 records, 0 segments imported, 0 failed steps`, out)
}

// TestJSONListsAreNeverNull: an empty list in a --json document is [],
// not null.
func TestJSONListsAreNeverNull(t *testing.T) {
	dir := smallStore(t)
	for _, args := range [][]string{{"verify", dir, "--json"}, {"repair", dir, "--json"}, {"inspect", dir, "--json"}} {
		out, err := runSegtool(t, args...)
		require.NoError(t, err)
		assert.NotContains(t, out, "null", "%v: an empty list is []", args)
	}
	out, err := runSegtool(t, "verify", dir, "--json")
	require.NoError(t, err)
	assert.Contains(t, out, `"problems": []`)
}

// TestDumpJSONRecords: dump --json --records puts each frame's records,
// whole, in its line.
func TestDumpJSONRecords(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	_, err := runSegtoolIn(t, "one\ntwo\n", "append", dir)
	require.NoError(t, err)
	out, err := runSegtool(t, "dump", dir, "--json", "--records")
	require.NoError(t, err)
	var frame struct {
		First   uint64 `json:"first"`
		Records []struct {
			Offset uint64 `json:"offset"`
			Value  string `json:"value"`
		} `json:"records"`
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, "the segment, its frame")
	require.NoError(t, json.Unmarshal([]byte(lines[1]), &frame))
	require.Len(t, frame.Records, 2)
	assert.Equal(t, "two", frame.Records[1].Value)
	assert.Equal(t, uint64(1), frame.Records[1].Offset)
}

// TestVerifyVerbose: verify --verbose explains each problem.
func TestVerifyVerbose(t *testing.T) {
	dir := smallStore(t)
	names, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	testutil.XorByte(t, names[1], 4096+100, 0x20)
	out, err := runSegtool(t, "verify", dir)
	require.ErrorIs(t, err, ErrDamage)
	assert.NotContains(t, out, "why:")
	assert.ErrorContains(t, err, "--verbose says why")
	out, err = runSegtool(t, "verify", dir, "--verbose")
	require.ErrorIs(t, err, ErrDamage)
	assert.Contains(t, out, "  why: corruption in "+names[1])
}

// TestVersion: --version names the build, its Go and the wal format.
func TestVersion(t *testing.T) {
	r := runBin(t, "", "--version")
	require.Equal(t, ExitOK, r.code)
	assert.Regexp(t, `^segtool \S+.*, go1\.\d+.* linux/\w+, wal format \d+\n$`, r.stdout)
}

// TestOlderFormatStore: a store written by wal format 2 (engine's golden
// one) is read by every command that reads, and dump names its format.
func TestOlderFormatStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "v2")
	require.NoError(t, os.CopyFS(dir, os.DirFS("../../../engine/testdata/golden-v2")))
	for _, args := range [][]string{{"inspect", dir}, {"verify", dir}, {"cat", dir, "--count", "3"}, {"dump", dir, "--count", "2", "--records"}} {
		out, err := runSegtool(t, args...)
		require.NoError(t, err, "%v", args)
		if args[0] == "dump" {
			assert.Contains(t, out, ": format 2, base ")
		}
	}
}
