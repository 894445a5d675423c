package engine

import (
	"errors"
	"sync/atomic"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// spareName is the file prepared (pre-zeroed) in the background to become
// the next segment; like every .tmp file it is discarded on open.
const spareName = "spare" + tmpSuffix

// zeroSpareBelow: the spare is zeroed when the active segment's writes
// average less than this many bytes, and only reserved (fallocate) above.
const zeroSpareBelow = 256 << 10

// spareFile is the next segment's file, zeroed by a goroutine while the
// active segment fills, so a roll only renames it and writes a header
// instead of zeroing SegmentSize bytes with appends stalled.
type spareFile struct {
	done chan struct{}
	dev  blockdev.Device
	err  error
	// hurry: the roll needs the spare now, zero the rest at once; cancel:
	// the log is closing, stop.
	hurry, cancel atomic.Bool
}

// spareLead is how much faster than the active segment fills its spare is
// zeroed: begun when the segment is a quarter full, the spare is ready
// when it is about three quarters full.
const spareLead = 2

// spareWait is how long the zeroing waits for appends before it looks
// again whether it may write more zeros.
const spareWait = time.Millisecond

// errSpareDropped stops the preparation of a spare the log no longer wants.
var errSpareDropped = errors.New("engine: the spare segment file was dropped (the log closed)")

// prepareSpareLocked starts preparing the spare file for the segment after
// s, the active segment, unless preallocation is off or a spare exists.
// Append calls it once s is a quarter full: by then s's writes tell
// whether to zero the spare, and there is time to zero it at a pace. The
// caller holds l.mu (shared is enough), which keeps s.w from being sealed
// away.
//
// The zeros are written in pieces of wal.ZeroChunk, each only once the
// segment has grown by half of one since the last: every fdatasync of the
// segment also flushes the zeros written since the one before, and
// zeroing all of it at once made a few dozen appends wait for tens of MiB
// of zeros (measured with strace: 1 KiB x 64 appends, fdatasync p50 213
// µs, 1.6 ms during the zeroing).
func (l *Log) prepareSpareLocked(s *segment) {
	if l.opts.NoPreallocate { // (a read-only log never gets here: Append saw it writable)
		return
	}
	l.spareMu.Lock()
	defer l.spareMu.Unlock()
	if l.spare != nil {
		return
	}
	// Zero the spare for small appends, where it makes each fdatasync
	// cheaper; only reserve it for large ones, where zeroing would double
	// the bytes written while the appends are bandwidth-bound (measured:
	// 1 KiB x 64 at 1.9x with zeroed blocks; 64 KiB x 16 as fast without).
	zero := true
	if st := s.w.Stats(); st.Writes > 0 && st.WriteBytes/st.Writes >= zeroSpareBelow {
		zero = false
	}
	sp := &spareFile{done: make(chan struct{})}
	l.spare = sp
	start := s.vis().pos
	pace := func(done int64) error {
		for {
			switch {
			case sp.cancel.Load():
				return errSpareDropped
			case sp.hurry.Load() || done <= spareLead*(s.vis().pos-start):
				return nil
			}
			time.Sleep(spareWait)
		}
	}
	go func() {
		defer close(sp.done)
		_ = l.dir.Remove(spareName)
		dev, err := l.dir.Open(spareName, blockdev.Options{Create: true})
		if err == nil {
			if err = wal.Prepare(dev, l.opts.SegmentSize, zero, pace); err != nil {
				dev.Close()
				dev = nil
			}
		}
		sp.dev, sp.err = dev, err
	}()
}

// takeSpare waits for the spare (its zeroing no longer paced) and hands it
// over, or returns nil if there is none or preparing it failed (the caller
// creates a file itself).
func (l *Log) takeSpare() blockdev.Device {
	l.spareMu.Lock()
	sp := l.spare
	l.spare = nil
	l.spareMu.Unlock()
	if sp == nil {
		return nil
	}
	sp.hurry.Store(true)
	<-sp.done
	if errors.Is(sp.err, errSpareDropped) {
		return nil
	}
	if sp.err != nil {
		l.opts.Logger.Warn("segstore: preparing the next segment failed; creating it on the spot", "err", sp.err)
		return nil
	}
	return sp.dev
}

// dropSpare waits for the spare, closes it and removes its file (on Close,
// so a closed log does not keep a segment's worth of zeros; a leftover after
// a crash is discarded at the next open).
func (l *Log) dropSpare() {
	l.spareMu.Lock()
	sp := l.spare
	if sp != nil {
		sp.cancel.Store(true)
	}
	l.spareMu.Unlock()
	if sp == nil {
		return
	}
	if dev := l.takeSpare(); dev != nil {
		dev.Close()
	}
	_ = l.dir.Remove(spareName)
}
