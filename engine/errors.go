package engine

import (
	"errors"
	"fmt"

	"github.com/segstore/segstore/wal"
)

// Errors returned by a Log. Damage is reported as a *CorruptionError.
var (
	// ErrCorrupt matches every *CorruptionError (and wal.ErrCorrupt).
	ErrCorrupt = wal.ErrCorrupt
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("engine: log closed")
	// ErrReadOnly: a change was asked of a log opened with ReadOnly.
	ErrReadOnly = errors.New("engine: log is read-only")
	// ErrOutOfRange: the offset is not in [StartOffset, EndOffset), or not
	// durable yet. The error says which bound it crossed.
	ErrOutOfRange = errors.New("engine: offset out of range")
	// ErrBatchTooLarge: one Append's records do not fit in one frame
	// (Options.MaxWrite); nothing was written. Split the batch.
	ErrBatchTooLarge = wal.ErrBatchTooLarge
	// ErrRecordTooLarge: a record exceeds wal.MaxRecordSize.
	ErrRecordTooLarge = wal.ErrRecordTooLarge
	// ErrFailed: a write, sync or file step of a change failed earlier, and
	// the log takes no more changes (appends, rolls, truncations, imports)
	// until it is reopened, which recovers it. The error also wraps the
	// cause and names the step.
	ErrFailed = errors.New("engine: the log takes no more changes")
	// ErrImport: ImportSegment refused a segment; nothing of it is visible.
	// The error says why (damage also matches ErrCorrupt).
	ErrImport = errors.New("engine: segment import refused")
	// ErrRewritten: the writer rewrote the end of the log a read-only Log was
	// following (TruncateBack), so what it read may no longer be the log's.
	// Reopen it.
	ErrRewritten = errors.New("engine: the writer rewrote the end of the log")
	// ErrNotSealed: the operation needs a sealed segment (Mmap); the
	// active one is not.
	ErrNotSealed = errors.New("engine: segment is not sealed")
)

// failure is the log's sticky error once a change failed (ErrFailed).
type failure struct {
	what string
	err  error
}

func (e *failure) Error() string {
	return fmt.Sprintf("engine: %s failed; the log takes no more changes, reopen it to recover: %v", e.what, e.err)
}

func (e *failure) Unwrap() []error { return []error{ErrFailed, e.err} }

// CorruptionError reports damage: which segment, where in its file, during
// which operation, and the cause.
type CorruptionError struct {
	Segment  uint64 // base offset of the segment
	File     string
	Position int64 // byte position in the file
	Op       string
	Err      error
}

func (e *CorruptionError) Error() string {
	advice := "no damaged bytes were returned and the file was left as it is: keep a copy and inspect it before repairing"
	if e.Op == "import" { // the bytes came from a peer, not from the log's files
		advice = "nothing of it was imported: the log is as it was"
	}
	cause := fmt.Sprint(e.Err)
	if we, ok := e.Err.(*wal.CorruptionError); ok {
		// Said once: the segment, file and advice are this error's.
		cause = we.Detail()
		if we.Position != e.Position {
			cause += fmt.Sprintf(" (at byte %d)", we.Position)
		}
	}
	return fmt.Sprintf("engine: %s: segment %d (%s) at byte %d: %s (%s)", e.Op, e.Segment, e.File, e.Position, cause, advice)
}

func (e *CorruptionError) Unwrap() []error { return []error{ErrCorrupt, e.Err} }
