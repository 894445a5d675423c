package cli

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/engine/peer"
	"github.com/segstore/segstore/wal"
)

// Exit statuses, the same for every command.
const (
	ExitOK          = 0   // done; verify and repair: the store is clean
	ExitData        = 1   // the store's data is damaged, or in a format this segtool cannot read
	ExitUsage       = 2   // a mistake in the command line or its input
	ExitEnvironment = 3   // the command could not run here: see exitStatuses
	ExitInterrupted = 130 // stopped by Ctrl-C (SIGINT) or SIGTERM before it was done
)

// exitStatuses documents the exit statuses, in segtool --help and in
// README.md (a test keeps the two equal).
var exitStatuses = []struct {
	Code    int
	Meaning string
}{
	{ExitOK, "success (verify, repair: the store is clean)"},
	{ExitData, "the store's data is damaged (a checksum, footer or index is wrong, a segment is missing) or in a newer format than this segtool reads"},
	{ExitUsage, "usage: an unknown command or flag, a bad flag value, a directory that is not a store, an offset outside the log, input that is not records"},
	{ExitEnvironment, "environment: permission denied, the store locked by another process, a filesystem without O_DIRECT (tmpfs), an I/O error, a full disk, a leader that cannot be reached, an address in use"},
	{ExitInterrupted, "interrupted (Ctrl-C or SIGTERM) before the command was done; cat --follow, serve and replicate end this way with 0"},
}

// errInterrupted: a command that runs to completion (verify, bench) was
// stopped by a signal.
var errInterrupted = errors.New("interrupted")

// ExitCode is the exit status for an error a command returned (see
// exitStatuses): usage errors 2, damage 1, an interrupt 130, and every
// other failure 3.
func ExitCode(err error) int {
	var ue usageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue):
		return ExitUsage
	case errors.Is(err, errInterrupted):
		return ExitInterrupted
	case errors.Is(err, ErrDamage), errors.Is(err, wal.ErrCorrupt), errors.Is(err, wal.ErrVersion),
		errors.Is(err, wal.ErrNotWAL), errors.Is(err, peer.ErrDiverged):
		return ExitData
	}
	return ExitEnvironment
}

// Run runs segtool with args (without the program name) and returns its
// exit status; an error is printed on stderr as one line (with --verbose,
// the whole chain of causes).
func Run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := NewRootCommand(stdout, stderr)
	root.SetIn(stdin)
	root.SetArgs(args)
	err := root.Execute()
	if err != nil {
		verbose, _ := root.PersistentFlags().GetBool("verbose")
		fmt.Fprintln(stderr, "segtool:", Message(err, verbose))
	}
	return ExitCode(err)
}

// Message is how segtool prints err: one line that says what failed,
// where and what to do, in terms of segtool's commands and flags. The Go
// packages' prefixes ("blockdev: ", "engine: ") are dropped, a repeated
// word is said once, damage is named by file and byte with the command
// that reports it, and the longer explanation is left to verbose.
func Message(err error, verbose bool) string {
	if verbose {
		return err.Error()
	}
	var ee *engine.CorruptionError
	var ce *wal.CorruptionError
	var locked *blockdev.LockedError
	var unsupported *blockdev.UnsupportedError
	var ue usageError
	switch {
	case errors.As(err, &ue) && strings.HasPrefix(ue.Error(), "unknown command"):
		return tidy(ue.Error()) + ` (segtool --help lists the commands)`
	case errors.As(err, &ee):
		return damaged(ee.File, ee.Segment, ee.Position)
	case errors.As(err, &ce):
		return damaged(ce.File, ce.Segment, ce.Position)
	case errors.As(err, &locked):
		return lockedMessage(locked)
	case errors.As(err, &unsupported):
		return fmt.Sprintf("%s is on %s, which %s: put the store on a disk-backed filesystem (ext4, xfs)", filepath.Dir(unsupported.Path), unsupported.FS, unsupported.Reason)
	case errors.Is(err, fs.ErrPermission):
		return tidy(err.Error()) + " (run as a user who may read and write the store's files)"
	case errors.Is(err, syscall.EROFS):
		return tidy(err.Error()) + " (the store is on a read-only filesystem: cat, dump, inspect, verify and serve --read-only work there)"
	case errors.Is(err, syscall.ENOSPC):
		return tidy(err.Error()) + " (free space on the store's filesystem)"
	}
	return tidy(err.Error())
}

// damaged says where damage is and what to do.
func damaged(file string, segment uint64, pos int64) string {
	return fmt.Sprintf("%s (segment %d) is damaged at byte %d; nothing damaged was printed and the file was not changed: segtool verify %s lists every problem (--verbose: the details)",
		file, segment, pos, filepath.Dir(file))
}

// packagePrefix matches the prefixes segstore's packages put on errors.
var packagePrefix = regexp.MustCompile(`\b(alignedbuf|blockdev|cache|engine|wal|peer|raftstore): `)

// tidy drops the Go packages' prefixes from an error's text and says a
// word once where two layers both said it ("open: open /x" is "open /x").
func tidy(s string) string {
	parts := strings.Split(packagePrefix.ReplaceAllString(s, ""), ": ")
	kept := parts[:0]
	for i, p := range parts {
		if i+1 < len(parts) && !strings.Contains(p, " ") && strings.SplitN(parts[i+1], " ", 2)[0] == p {
			continue // a one-word layer the next one repeats
		}
		kept = append(kept, p)
	}
	return strings.Join(kept, ": ")
}

// lockedMessage says which process writes the store and what to do.
func lockedMessage(e *blockdev.LockedError) string {
	dir := filepath.Dir(e.Path)
	who := "another process (its id is not recorded yet)"
	if e.PID > 0 {
		who = fmt.Sprintf("process %d", e.PID)
		if e.Command != "" {
			who += fmt.Sprintf(" (%s)", e.Command)
		}
	}
	return fmt.Sprintf("%s is being written by %s: stop it first, or use a command that only reads (cat, dump, inspect, verify, serve --read-only), which work beside it", dir, who)
}
