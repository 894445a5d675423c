package engine

import "fmt"

// logState is where a Log is in its life:
//
//	writable ──► failed ──► closed
//	    └───────────────────► closed
//	read-only ──────────────► closed
//
// It is kept in Log.state, an atomic, so that readers, Wait and Stats look
// without a lock. Open sets it (writable or read-only) before the log is
// shared; from then on two functions only write it: enterLocked, with
// Log.mu held exclusively (fail, Close); and writerFailed, the OnFail hook of the active segment's
// writer, which runs under that writer's own lock and not Log.mu (an
// appender holding Log.mu shared may be waiting for that writer), and so
// only moves writable to failed, by a compare-and-swap. Nothing leaves
// closed.
//
// What each state refuses:
//   - writable: nothing.
//   - read-only (opened with Options.ReadOnly): every change (Append,
//     Roll, the truncations, imports) returns ErrReadOnly; Sync returns
//     nil.
//   - failed: a write or fdatasync of the active segment's writer failed,
//     or a change (a roll, truncation or import) stopped halfway. After a
//     change stopped halfway (Log.failed is set) every change, and Sync,
//     returns that failure: an error wrapping ErrFailed and the cause, and
//     naming the step. After a failed write alone (Log.failed is nil)
//     Append and Sync return the writer's sticky error (wrapping
//     wal.ErrFailed and the cause); a change that needs the writer meets
//     the same error, and a roll, an import or a batch that needs a new
//     segment then records it as the log's failure; TruncateFront, which
//     does not need the writer, still runs. Wait returns the failure in
//     both cases.
//   - closed: every call returns ErrClosed.
type logState uint32

const (
	stateWritable logState = iota + 1
	stateReadOnly
	stateFailed
	stateClosed
)

func (s logState) String() string {
	switch s {
	case stateWritable:
		return "writable"
	case stateReadOnly:
		return "read-only"
	case stateFailed:
		return "failed"
	case stateClosed:
		return "closed"
	}
	return fmt.Sprintf("logState(%d)", uint32(s))
}

// loadState returns the log's state. It needs no lock.
func (l *Log) loadState() logState { return logState(l.state.Load()) }

// closed reports whether Close has begun. It needs no lock: Close enters
// the closed state before it lets go of anything.
func (l *Log) closed() bool { return l.loadState() == stateClosed }

// openedReadOnly reports whether the log was opened with Options.ReadOnly
// and is not closed yet. For the steps of Open, where no Close can come,
// it is exactly Options.ReadOnly.
func (l *Log) openedReadOnly() bool { return l.loadState() == stateReadOnly }

// enterLocked moves the log to state to (failed or closed) and returns the
// state it left; a closed log stays closed (and closed is returned). The
// caller holds mu exclusively.
func (l *Log) enterLocked(to logState) (from logState) {
	for {
		from = l.loadState()
		if from == stateClosed {
			return from
		}
		// A loop: writerFailed may move writable to failed meanwhile.
		if l.state.CompareAndSwap(uint32(from), uint32(to)) {
			return from
		}
	}
}

// writerFailed is the OnFail hook of segment s's writer: a write or
// fdatasync failed and the writer refuses appends from now on. If s is
// the active segment, the log is failed. A retired segment's writer fails
// only in its seal, whose roll then stops the log itself (fail). It runs
// under the writer's lock, without mu.
func (l *Log) writerFailed(s *segment) {
	if !s.retired.Load() {
		l.state.CompareAndSwap(uint32(stateWritable), uint32(stateFailed))
	}
	l.wakeWaiters() // a Wait for what will never be durable returns the failure
}
