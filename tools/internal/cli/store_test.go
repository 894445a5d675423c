package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/golden")

// smallStore builds a store of 3 sealed 64 KiB segments and an active one,
// with a clock that starts at a fixed time and ticks a millisecond per
// append, so every run writes the same bytes.
func smallStore(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.IndexInterval, opts.Logger = 64<<10, 16<<10, 4096, quietLogger
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex // a roll seals in a goroutine of its own
	opts.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); now = now.Add(time.Millisecond); return now }
	l, err := engine.Open(dir, opts)
	require.NoError(t, err)
	for i := 0; len(l.Segments()) < 4; i++ {
		_, err := l.Append([]byte(fmt.Sprintf("record %04d: %s", i, strings.Repeat("ab", 100))), []byte(fmt.Sprintf("second %04d", i)))
		require.NoError(t, err)
		require.NoError(t, l.Sync()) // the roll it started is done: the same steps, at the same times, in every run
	}
	require.NoError(t, l.Close())
	return dir
}

// openWriter opens the store smallStore made for writing, as another
// process would: it holds the lock; the test closes it when done.
func openWriter(t *testing.T, dir string) *engine.Log {
	t.Helper()
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.MaxWrite, opts.Logger = 64<<10, 16<<10, quietLogger
	l, err := engine.Open(dir, opts)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

// storeEnd is the offset after the last record of the store in dir.
func storeEnd(t *testing.T, dir string) uint64 {
	t.Helper()
	o := engine.DefaultOptions()
	o.ReadOnly, o.Logger = true, quietLogger
	l, err := engine.Open(dir, o)
	require.NoError(t, err)
	defer l.Close()
	return l.EndOffset()
}

// golden compares out with testdata/golden/name after replacing the
// store's directory with STORE, segment ids and checksums with X, and
// dropping lines that depend on the machine; -update rewrites the file.
func golden(t *testing.T, name, dir, out string) {
	t.Helper()
	if dir != "" {
		out = strings.ReplaceAll(out, dir, "STORE")
	}
	out = regexp.MustCompile(`(?m)^storage: .*\n`).ReplaceAllString(out, "")
	// Segment ids are random per file, and frame checksums cover them.
	out = regexp.MustCompile(`(id |crc32c |"segment_id":"|"checksum":")[0-9a-f]{8,16}`).ReplaceAllString(out, "${1}X")
	path := filepath.Join("testdata", "golden", name)
	if *update {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(out), 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run with -update to create it")
	assert.Equal(t, string(want), out)
}

func TestGoldenOutputs(t *testing.T) {
	dir := smallStore(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"inspect.txt", []string{"inspect", dir}},
		{"verify.txt", []string{"verify", dir}},
		{"cat-text.txt", []string{"cat", dir, "--from", "500", "--count", "4"}},
		{"cat-hex.txt", []string{"cat", dir, "--from", "1", "--count", "2", "--format", "hex"}},
		{"cat-json.txt", []string{"cat", dir, "--since", "2026-11-25T12:00:00.300Z", "--count", "3", "--format", "json"}},
		{"dump.txt", []string{"dump", dir, "--from", "700", "--count", "6", "--records"}},
		{"dump-json.txt", []string{"dump", dir, "--from", "992", "--json"}},
		{"dump-since.txt", []string{"dump", dir, "--since", "2026-11-25T12:00:00.536Z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runSegtool(t, tc.args...)
			require.NoError(t, err)
			golden(t, tc.name, dir, out)
		})
	}
}

func TestJSONOutputsParse(t *testing.T) {
	dir := smallStore(t)
	out, err := runSegtool(t, "inspect", dir, "--json")
	require.NoError(t, err)
	var ins struct {
		Start, End, Records uint64
		Segments            []struct {
			Base, Next, Records uint64
			Sealed              bool
		}
		Storage struct{ Direct bool }
	}
	require.NoError(t, json.Unmarshal([]byte(out), &ins))
	assert.Len(t, ins.Segments, 4)
	assert.Equal(t, ins.End-ins.Start, ins.Records)
	assert.True(t, ins.Storage.Direct)
	assert.Equal(t, ins.Segments[1].Next-ins.Segments[1].Base, ins.Segments[1].Records)
	assert.Regexp(t, `"first_record": "2026-11-25T12:00:00.002Z"`, out, "snake_case, UTC")

	out, err = runSegtool(t, "verify", dir, "--json")
	require.NoError(t, err)
	var ver engine.VerifyReport
	require.NoError(t, json.Unmarshal([]byte(out), &ver))
	assert.True(t, ver.Clean())
	assert.Equal(t, ins.Records, ver.Records)

	out, err = runSegtool(t, "cat", dir, "--format", "json")
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, int(ins.Records))
	var rec struct {
		Offset uint64 `json:"offset"`
		Value  string `json:"value"`
	}
	require.NoError(t, json.Unmarshal([]byte(lines[7]), &rec))
	assert.Equal(t, uint64(7), rec.Offset)
	assert.Equal(t, "second 0003", rec.Value)

	out, err = runSegtool(t, "dump", dir, "--json")
	require.NoError(t, err)
	frames := 0
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var obj map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &obj), line)
		if _, ok := obj["frame"]; ok {
			frames++
		}
	}
	assert.Equal(t, int(ver.Frames), frames, "dump shows every frame verify counted")
}

func TestAppendThenCat(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "new")
	var out bytes.Buffer
	cmd := NewRootCommand(&out, &out)
	cmd.SetIn(strings.NewReader("one\ntwo\n\nfour without newline"))
	cmd.SetArgs([]string{"append", dir})
	require.NoError(t, cmd.Execute())
	assert.Equal(t, "0\n1\n2\n3\n", out.String(), "an empty line is an empty record")

	bin := filepath.Join(t.TempDir(), "records.bin")
	var b []byte
	for _, r := range []string{"x", "", "binary\x00\xff"} {
		b = append(b, byte(len(r)), 0, 0, 0)
		b = append(b, r...)
	}
	require.NoError(t, os.WriteFile(bin, b, 0o644))
	got, err := runSegtool(t, "append", dir, "--binary", "--json", bin)
	require.NoError(t, err)
	assert.Equal(t, "{\"offset\":4}\n{\"offset\":5}\n{\"offset\":6}\n", got)

	got, err = runSegtool(t, "cat", dir, "--from", "2", "--count", "2")
	require.NoError(t, err)
	assert.Equal(t, "2\t\n3\tfour without newline\n", got, "text: offset, tab, record")
	got, err = runSegtool(t, "cat", dir, "--from", "2", "--count", "2", "--format", "raw")
	require.NoError(t, err)
	assert.Equal(t, "\nfour without newline\n", got, "raw: the record alone")
	got, err = runSegtool(t, "cat", dir, "--from", "6", "--format", "json")
	require.NoError(t, err)
	assert.Contains(t, got, `"value_base64":"YmluYXJ5AP8="`, "bytes that are not UTF-8 are base64")
}

// TestCatFollow: cat --follow prints what is there, then the records a
// writer in another process appends, until --count or an interrupt.
func TestCatFollow(t *testing.T) {
	dir := smallStore(t)
	writer := openWriter(t, dir)
	from := writer.EndOffset() - 2
	out, err := runSegtool(t, "inspect", dir)
	require.NoError(t, err)
	assert.Contains(t, out, fmt.Sprintf("writer: another process, appends acknowledged below offset %d", writer.EndOffset()))

	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- Cat(context.Background(), pw, dir, CatOptions{From: int64(from), Count: 2 + 300, Format: "raw", Follow: true, Poll: time.Millisecond})
		pw.Close()
	}()
	lines := bufio.NewScanner(pr)
	for range 2 {
		require.True(t, lines.Scan(), "the records already there")
	}
	for i := range 300 {
		_, err := writer.Append(fmt.Appendf(nil, "followed %d", i))
		require.NoError(t, err)
		if i == 150 {
			require.NoError(t, writer.Roll()) // across a new segment
		}
	}
	for i := range 300 {
		require.True(t, lines.Scan(), "record %d", i)
		require.Equal(t, fmt.Sprintf("followed %d", i), lines.Text())
	}
	require.NoError(t, <-done, "stops after --count records")

	ctx, cancel := context.WithCancel(context.Background())
	go func() { done <- Cat(ctx, io.Discard, dir, CatOptions{From: -1, Follow: true}) }()
	cancel()
	require.NoError(t, <-done, "an interrupt ends following without an error")
}

// TestBadInput: each mistake is one clear error and the right exit code,
// never a panic.
func TestBadInput(t *testing.T) {
	dir := smallStore(t)
	empty := t.TempDir()
	for _, tc := range []struct {
		args []string
		msg  string
		code int
	}{
		{[]string{"inspect", filepath.Join(empty, "missing")}, "missing does not exist: give the directory of a store", 2},
		{[]string{"verify", empty}, "is not a store: it holds no segment files", 2},
		{[]string{"cat", empty}, "no segment files", 2},
		{[]string{"cat", dir, "--from", "99999"}, "outside the log's records", 2},
		{[]string{"cat", dir, "--format", "xml"}, "want text, raw, hex or json", 2},
		{[]string{"cat", dir, "--since", "yesterday"}, "want a positive duration", 2},
		{[]string{"inspect"}, "want one argument", 2},
		{[]string{"verify", dir, "--no-such-flag"}, "unknown flag", 2},
		{[]string{"append"}, "want the store's directory", 2},
		// Options the engine refuses, in the flags' terms.
		{[]string{"quickstart", "--dir", filepath.Join(empty, "qs"), "--segment-size", "1000"}, "--segment-size 1000: want from 64KiB to 16GiB", 2},
		{[]string{"quickstart", "--dir", filepath.Join(empty, "qs"), "--segment-size", "64KiB", "--record-size", "65536", "--batch", "64"}, "--batch 64 records of --record-size 65536 do not fit in one write (16KiB with segments of 64KiB)", 2},
		{[]string{"bench", "append", "--segment-size", "32GiB"}, "--segment-size 32GiB: want from 64KiB to 16GiB", 2},
		{[]string{"bench", "read", "--cache", "1KiB"}, "--cache 1KiB: want at least 64KiB", 2},
		{[]string{"bench", "export", "--size", "20GiB"}, "--size 21474836480 is too large for one segment", 2},
		{[]string{"bench", "append", "--segment-size", "99999999999999GiB"}, "want a number of bytes below 8 EiB", 2},
		{[]string{"replicate", "--segment-size", "100", "http://127.0.0.1:1", filepath.Join(empty, "copy")}, "--segment-size 100: want from 64KiB to 16GiB", 2},
	} {
		_, err := runSegtool(t, tc.args...)
		require.Error(t, err, "%v", tc.args)
		assert.ErrorContains(t, err, tc.msg, "%v", tc.args)
		assert.Equal(t, tc.code, ExitCode(err), "%v", tc.args)
	}
}

// TestVerifyFindsDamage: verify exits 1 naming the segment and position,
// and says whether the damage is repairable.
func TestVerifyFindsDamage(t *testing.T) {
	dir := smallStore(t)
	names, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	b, err := os.ReadFile(names[1])
	require.NoError(t, err)
	b[4096+100] ^= 1
	require.NoError(t, os.WriteFile(names[1], b, 0o644))
	out, err := runSegtool(t, "verify", dir)
	require.ErrorIs(t, err, ErrDamage)
	assert.Equal(t, 1, ExitCode(err))
	assert.Contains(t, out, "problem: segment")
	assert.Contains(t, out, filepath.Base(names[1]))
	assert.Contains(t, out, "at byte 4096: corruption")
	assert.Contains(t, out, "not repairable without losing records")
}

// scanEnd returns where the valid frames of a segment file end, and the
// offset after them.
func scanEnd(t *testing.T, file string) (int64, uint64) {
	t.Helper()
	dev, err := blockdev.Open(file, blockdev.Options{ReadOnly: true})
	require.NoError(t, err)
	defer dev.Close()
	sc, err := wal.NewScanner(dev)
	require.NoError(t, err)
	for sc.Next() {
	}
	require.NoError(t, sc.Err())
	return sc.End(), sc.NextOffset()
}

func TestRepair(t *testing.T) {
	segFiles := func(dir string) []string { n, _ := filepath.Glob(filepath.Join(dir, "*.seg")); return n }
	tests := []struct {
		name     string
		damage   func(t *testing.T, files []string)
		action   string
		fixable  bool
		problems int
	}{
		{"torn tail", func(t *testing.T, files []string) {
			last := files[len(files)-1]
			end, next := scanEnd(t, last)
			frame := make([]byte, wal.FrameSize(wal.PayloadSize([][]byte{make([]byte, 2000)})))
			n := wal.EncodeFrame(frame, 0, end, -1, next, 1, [][]byte{bytes.Repeat([]byte{'t'}, 2000)})
			clear(frame[(end+1024+511)&^511-end : n]) // its last sectors never reached the disk
			f, err := os.OpenFile(last, os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = f.WriteAt(frame[:n], end)
			require.NoError(t, err)
			require.NoError(t, f.Close())
		}, "cut the torn tail of", true, 1},
		{"damaged footer", func(t *testing.T, files []string) {
			end, _ := scanEnd(t, files[1])
			testutil.XorByte(t, files[1], end+wal.FrameHeaderLen+40, 0x20)
		}, "rebuild the footer of", true, 1},
		{"unsealed segment", func(t *testing.T, files []string) {
			end, _ := scanEnd(t, files[1])
			require.NoError(t, os.Truncate(files[1], end))
		}, "seal ", true, 1},
		{"flipped byte in a record", func(t *testing.T, files []string) {
			testutil.XorByte(t, files[1], 4096+100, 0x20)
		}, "cannot be repaired without dropping records", false, 1},
		{"missing segment", func(t *testing.T, files []string) {
			require.NoError(t, os.Remove(files[1]))
		}, "cannot be repaired without dropping records", false, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := smallStore(t)
			tc.damage(t, segFiles(dir))
			before := snapshot(t, dir)

			out, err := runSegtool(t, "repair", dir)
			assert.Contains(t, out, tc.action)
			assert.Equal(t, before, snapshot(t, dir), "a dry run changes nothing")
			if !tc.fixable {
				require.ErrorIs(t, err, ErrDamage)
				_, err = runSegtool(t, "repair", dir, "--apply")
				require.ErrorIs(t, err, ErrDamage)
				assert.ErrorContains(t, err, "nothing was changed")
				assert.Equal(t, before, snapshot(t, dir), "unrepairable damage is left as it is")
				return
			}
			require.NoError(t, err)
			assert.Contains(t, out, "dry run: nothing changed")

			out, err = runSegtool(t, "repair", dir, "--apply")
			require.NoError(t, err, out)
			assert.Contains(t, out, "did: "+tc.action)
			assert.Contains(t, out, "after the repair: 0 problems")
			kept, _ := filepath.Glob(filepath.Join(dir, "damaged-*", "*.seg"))
			assert.Len(t, kept, tc.problems, "each damaged file is kept as it was")
			_, err = runSegtool(t, "verify", dir)
			require.NoError(t, err)
		})
	}
}

// snapshot is every file of dir with its bytes.
func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	names, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, n := range names {
		if fi, err := os.Stat(n); err == nil && fi.Mode().IsRegular() {
			b, err := os.ReadFile(n)
			require.NoError(t, err)
			m[filepath.Base(n)] = b
		}
	}
	return m
}

// TestNewerFormatVersion: a store written by a newer format is refused
// with one line that says so, by every command that reads it.
func TestNewerFormatVersion(t *testing.T) {
	dir := smallStore(t)
	names, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	f, err := os.OpenFile(names[0], os.O_RDWR, 0)
	require.NoError(t, err)
	hdr := make([]byte, wal.FileHeaderLen)
	_, err = f.ReadAt(hdr, 0)
	require.NoError(t, err)
	binary.LittleEndian.PutUint32(hdr[8:], wal.Version+1) // the header's version field, and its checksum
	binary.LittleEndian.PutUint32(hdr[60:], crc32.Checksum(hdr[:60], crc32.MakeTable(crc32.Castagnoli)))
	_, err = f.WriteAt(hdr, 0)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	require.NoError(t, os.Remove(filepath.Join(dir, "MANIFEST"))) // else the file is opened at first use
	for _, args := range [][]string{{"inspect", dir}, {"cat", dir}, {"dump", dir}} {
		_, err := runSegtool(t, args...)
		require.ErrorIs(t, err, wal.ErrVersion, "%v", args)
		assert.ErrorContains(t, err, "upgrade segstore")
		assert.NotContains(t, err.Error(), "\n")
	}
	out, err := runSegtool(t, "verify", dir)
	require.ErrorIs(t, err, ErrDamage)
	assert.Contains(t, out, "upgrade segstore")
	assert.Contains(t, out, ": version: ")
	assert.Contains(t, out, "not damage: check it with a newer segtool")
	assert.NotContains(t, out, "not repairable without losing records", "a newer file is not damage")
}

// TestReadOnlyCommandsBesideAWriter: inspect, cat, dump and verify work on
// a store another writer holds open (and locked) and appends to.
func TestReadOnlyCommandsBesideAWriter(t *testing.T) {
	dir := smallStore(t)
	opts := engine.DefaultOptions()
	opts.SegmentSize, opts.Logger = 64<<10, quietLogger
	l, err := engine.Open(dir, opts)
	require.NoError(t, err)
	defer l.Close()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			if _, err := l.Append([]byte("live record")); err != nil {
				done <- err
				return
			}
		}
	}()
	for _, args := range [][]string{{"inspect", dir}, {"cat", dir, "--count", "100"}, {"dump", dir, "--count", "10"}} {
		_, err := runSegtool(t, args...)
		assert.NoError(t, err, "%v", args)
	}
	close(stop)
	require.NoError(t, <-done)
	out, err := runSegtool(t, "verify", dir)
	require.NoError(t, err, "with the writer idle the store verifies clean: %s", out)
}

// TestInspectWarnsOfADamagedFooter: a flipped byte in the footer of a
// sealed segment (found when inspect loads it, after the open trusted it
// through the manifest) is a warning in inspect's report, in text and
// JSON, naming the segment; the records are intact, so it is no error.
func TestInspectWarnsOfADamagedFooter(t *testing.T) {
	dir := smallStore(t)
	names, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	require.Greater(t, len(names), 2)
	footer := int64(binary.LittleEndian.Uint64(testutil.ReadTail(t, names[1], wal.FooterTailLen)))
	testutil.XorByte(t, names[1], footer+wal.FrameHeaderLen+1, 0x20)
	base, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(names[1]), ".seg"), 10, 64)
	require.NoError(t, err)

	out, err := runSegtool(t, "inspect", dir)
	require.NoError(t, err)
	assert.Contains(t, out, fmt.Sprintf("damaged footers in segments [%d]: a read-write open rebuilds them", base))
	out, err = runSegtool(t, "inspect", dir, "--json")
	require.NoError(t, err)
	var doc struct {
		Recovery struct {
			RebuiltFooters []uint64 `json:"rebuilt_footers"`
		} `json:"last_open"`
		Warnings []string `json:"warnings"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &doc))
	assert.Equal(t, []uint64{base}, doc.Recovery.RebuiltFooters)
	assert.Len(t, doc.Warnings, 1)
}
