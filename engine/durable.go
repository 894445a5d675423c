package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/wal"
)

// durableName is a small file through which the writer tells read-only
// logs in other processes how far its active segment is durable, so that
// they never show a record before the writer has acknowledged it (a frame
// is on the device, and readable, before its fdatasync returns). It is
// mapped shared by the writer and its readers; the kernel writes it back
// like any file, but nothing depends on it surviving a crash.
//
// Its layout is layout's (layout.DurableMagic and the word offsets): u64
// words in the machine's own byte order, unlike every other file of a
// store, since they are atomic loads and stores on a shared mapping
// between processes of one machine; the file is never exported. Its
// order word is layout.DurableOrderMark as its writer stored it: a
// process of the other byte order (an emulated one, or a directory moved
// between machines) reads it swapped, and then trusts none of the words
// (read fails closed) instead of taking open's swapped 1 for a closed log
// or pos for a huge durable end. A writer whose order the file does not
// have starts its words afresh.
const durableName = "DURABLE"

const (
	durableMagic = layout.DurableMagic
	durableSize  = layout.DurableSize
	durSeq       = layout.DurableSeq
	durBase      = layout.DurableBase
	durPos       = layout.DurablePos
	durOffset    = layout.DurableOffset
	durOpen      = layout.DurableOpen
	durOrder     = layout.DurableOrder
	// durableOrder reads the same only in the byte order that stored it.
	durableOrder = layout.DurableOrderMark
)

// durableFile is the mapped DURABLE file.
type durableFile struct {
	mem []byte
	// m is the mapping of mem. The writer reads one byte of the file
	// (m.ReadAt) after each publish, so that readers watching the file
	// (inotify, which reports reads) wake: the mapping's stores make no
	// file event. A read costs the publisher a system call of about a
	// microsecond on the appender's path, and nothing else: the read
	// never updates the inode where the system allows (a write would,
	// through the file system's journal, which can make it wait). The
	// writer's Close writes the byte instead (m.WriteAt).
	//
	// A reader's m.Stat identifies the file mapped: a writer that finds
	// no DURABLE (removed while no writer had it) creates another file,
	// whose words a reader still mapping the old one would never see.
	m     blockdev.SharedMapping
	woken [1]byte // what the wake-up reads read (publish is serialized)
}

func (d *durableFile) word(off int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&d.mem[off]))
}

// createDurable opens (creating) the DURABLE file of the writer of a
// directory that maps files (share) and maps it for writing.
func createDurable(share blockdev.Mapper) (*durableFile, error) {
	m, err := share.MapShared(durableName, durableSize, true)
	if err != nil {
		return nil, fmt.Errorf("engine: the durable-position file: %w", err)
	}
	mem := m.Bytes()
	copy(mem, durableMagic)
	d := &durableFile{mem: mem, m: m}
	switch {
	case d.word(durOrder).Load() != durableOrder:
		// New, or written in the other byte order: readers of this
		// order trust no word until order is stored, last.
		for off := durSeq; off < durOrder; off += 8 {
			d.word(off).Store(0)
		}
		d.word(durOrder).Store(durableOrder)
	case d.word(durSeq).Load()%2 == 1:
		d.word(durSeq).Add(1) // left odd by a writer that died mid-update
	}
	return d, nil
}

// openDurable maps the DURABLE file of a directory of caps c read-only;
// nil if there is none, or none usable (being created, not a regular
// file, not mappable, or a directory that maps nothing): readers then
// treat a live writer as publishing nothing.
func openDurable(c dirCaps) *durableFile {
	if c.share == nil {
		return nil
	}
	// A read-only MapShared never waits (on a FIFO) and refuses anything
	// but a regular file of at least durableSize bytes.
	m, err := c.share.MapShared(durableName, durableSize, false)
	if err != nil {
		return nil
	}
	mem := m.Bytes()
	if string(mem[:8]) != durableMagic {
		m.Close()
		return nil
	}
	return &durableFile{mem: mem, m: m}
}

// replaced reports whether another file than the one a reader's d maps
// is the DURABLE file of the directory (of caps c) now. One removed and
// not replaced is not: the writer that has it open publishes there still
// (a writer that finds none creates one). A directory that cannot tell
// files apart replaces none.
func (d *durableFile) replaced(c dirCaps) bool {
	if c.stat == nil {
		return false
	}
	st, err := c.stat.Stat(durableName)
	return err == nil && !st.SameFile(d.m.Stat())
}

// follower is what a read-only log knows of the writer it follows: its
// DURABLE file and what the last look read there. Guarded by mu, which
// serializes Refresh (and Close with it).
type follower struct {
	mu      sync.Mutex
	durable *durableFile // the writer's DURABLE, mapped; nil until the writer made it, or in a directory that maps nothing
	live    bool         // a writer held the lock at the last look
	ack     durableState // what the live writer had published at the last look
	ackOK   bool         // ack was read consistently
}

// currentDurable is the reader's mapping of the DURABLE file of its
// directory as it is now (nil if there is none usable), mapped again if
// the file was replaced since: its old words say nothing of the writer
// that made the new file (they may say the log is closed, which beside
// that live writer would show frames it has not acknowledged, or give an
// end it has long passed, which would hold the reader there). Callers
// hold followed.mu.
func (l *Log) currentDurable() *durableFile {
	if l.followed.durable != nil && l.followed.durable.replaced(l.caps) {
		l.followed.durable.close(false)
		l.followed.durable = nil
	}
	if l.followed.durable == nil && !l.closed() { // the writer may have made it since
		l.followed.durable = openDurable(l.caps)
	}
	return l.followed.durable
}

// publish records segment base as durable up to p (writer; callers
// serialize), then wakes the readers watching the file.
func (d *durableFile) publish(base uint64, p position) {
	seq := d.word(durSeq)
	seq.Add(1)
	d.word(durBase).Store(base)
	d.word(durPos).Store(uint64(p.pos))
	d.word(durOffset).Store(p.off)
	seq.Add(1)
	d.word(durOpen).Store(1)
	d.m.ReadAt(d.woken[:], durableWakeAt) // a wake-up only: its bytes and error do not matter
}

// durableWakeAt is the byte publish reads and Close writes, away from the
// words.
const durableWakeAt = layout.DurableWakeAt

// close marks the log closed by its writer and unmaps the file (callers
// serialize it with publish, and publish nothing after it). A writer's
// close writes its last wake-up byte: a write, which readers that watch
// only the directory's writes see too.
func (d *durableFile) close(writer bool) {
	if writer {
		d.word(durOpen).Store(0)
		d.m.WriteAt([]byte{1}, durableWakeAt)
	}
	d.m.Close()
}

// durableTries bounds how many times a reader reads the words before it
// gives up on a consistent value: an update is a few stores, but the
// writer can be preempted in the middle of one (or have died there, until
// the next writer's open resets the words).
const durableTries = 1 << 10

// durableState is what a writer published: its active segment's base and
// acknowledged end, and whether it has the log open.
type durableState struct {
	base uint64
	end  position
	open bool
}

// read is one consistent read of the words. ok is false if they stayed
// mid-update through every try, or are in the other byte order: the
// caller then knows nothing of what the writer has acknowledged and must
// show no more than it already does.
func (d *durableFile) read() (st durableState, ok bool) {
	for range durableTries {
		if d.word(durOrder).Load() != durableOrder {
			return durableState{}, false
		}
		seq := d.word(durSeq).Load()
		if seq%2 == 1 {
			runtime.Gosched() // an update in progress: let the writer finish
			continue
		}
		st.open = d.word(durOpen).Load() == 1
		st.base = d.word(durBase).Load()
		st.end = position{pos: int64(d.word(durPos).Load()), off: d.word(durOffset).Load()}
		if d.word(durSeq).Load() == seq {
			return st, true
		}
	}
	return durableState{}, false
}

// limit says how far the segment at seg may be shown to a reader beside a
// live writer that published st: all of it when the writer has moved past
// it or closed the log (bounded false), up to the published durable end
// when it is the writer's active segment, and nothing of a segment newer
// than that (created, nothing durable yet).
func (st durableState) limit(seg uint64) (end position, bounded bool) {
	switch {
	case !st.open || st.base > seg:
		return position{}, false
	case st.base == seg:
		return st.end, true
	default:
		return position{pos: wal.DataStart, off: seg}, true
	}
}

// lookAtWriter reads, once per look of a read-only log (under followed.mu),
// whether a writer holds the lock and what it has published, for ackLimit.
// It reports false when a live writer's words could not be read
// consistently: the look must then show nothing new (the writer wakes its
// readers again after the update it is in).
func (l *Log) lookAtWriter() bool {
	l.currentDurable()
	l.followed.live = writerLive(l.caps)
	l.followed.ack, l.followed.ackOK = durableState{}, true
	if l.followed.live && l.followed.durable != nil {
		l.followed.ack, l.followed.ackOK = l.followed.durable.read()
	}
	return l.followed.ackOK
}

// ackLimit says how far a read-only log may show segment s, as its last
// lookAtWriter found: without a live writer (none holds the lock), all of
// it, since what a dead writer last published says nothing (its frames are
// what the next open keeps); beside one, as its DURABLE file says, or
// nothing of s if it publishes none or its words could not be read.
func (l *Log) ackLimit(s *segment) (end position, bounded bool) {
	switch {
	case !l.followed.live:
		return position{}, false
	case l.followed.durable == nil || !l.followed.ackOK:
		return position{pos: wal.DataStart, off: s.base}, true
	default:
		return l.followed.ack.limit(s.base)
	}
}

func (l *Log) notifyDurable() {
	l.durMu.Lock()
	l.publishDurableLocked()
	l.wakeLocked()
	l.durMu.Unlock()
}

// wakeWaiters wakes Wait and WaitActive callers to look again (the log
// failed or closed: what they wait for may never come).
func (l *Log) wakeWaiters() {
	l.durMu.Lock()
	l.wakeLocked()
	l.durMu.Unlock()
}

func (l *Log) wakeLocked() {
	if l.durWaited { // no channel to spend on appends nobody waits for
		close(l.durCh)
		l.durCh, l.durWaited = make(chan struct{}), false
	}
}

// openDurable sets up the DURABLE file: a writer creates it and publishes
// where its active segment is durable; a read-only log maps it if it
// exists, and hides what the writer has not acknowledged yet.
func (l *Log) openDurable() error {
	if l.caps.share == nil {
		return nil
	}
	var err error
	if !l.openedReadOnly() {
		if l.pub, err = createDurable(l.caps.share); err != nil {
			// Appends work without it; readers in other processes then
			// show none of the active segment while this writer lives.
			l.opts.Logger.Warn("segstore: cannot publish the acknowledged end for readers in other processes: until this writer closes they show none of its active segment; make "+durableName+" in the log's directory creatable and mappable",
				"dir", l.dir.Path(), "err", err)
			return nil
		}
		l.publishDurable()
		return nil
	}
	l.lookAtWriter()
	for _, s := range *l.segs.Load() {
		end, bounded := l.ackLimit(s)
		if !bounded || s.isSealed() {
			continue
		}
		// The words bound the file they were published for: the one this
		// open read only if its name still is that file now that they are
		// read. A rewrite renamed over it since (TruncateBack) has other
		// frames at those positions.
		if same, err := l.sameFile(s); err != nil || !same {
			return errors.Join(err, fmt.Errorf("%w: segment %s was removed or replaced while this read-only open read it", ErrRewritten, s.name))
		}
		if s.vis().pos > end.pos {
			s.hideFrom(end)
		}
	}
	return nil
}

// publishDurable tells read-only logs in other processes where the
// active segment is durable.
func (l *Log) publishDurable() {
	l.durMu.Lock()
	l.publishDurableLocked()
	l.durMu.Unlock()
}

// publishDurableLocked publishes the active segment's durable end; while
// a roll has retired a segment and not sealed it yet, that segment's end
// instead: readers in other processes see the roll when the seal is done
// (a segment followed by another but without its footer would look like
// one a crash left unsealed, and they would take it as sealed).
func (l *Log) publishDurableLocked() {
	if l.pub == nil { // a read-only log publishes nothing
		return
	}
	if segs := *l.segs.Load(); len(segs) > 0 {
		s := segs[len(segs)-1]
		if n := len(segs); n > 1 && segs[n-2].retired.Load() && !segs[n-2].isSealed() {
			s = segs[n-2]
		}
		l.pub.publish(s.base, s.vis())
	}
}

// DurableOffset: every offset below it is durable (and readable).
func (l *Log) DurableOffset() uint64 {
	segs := *l.segs.Load()
	if len(segs) == 0 {
		return 0
	}
	return segs[len(segs)-1].vis().off
}

// Wait returns once offset is durable (DurableOffset() > offset), or when
// ctx is done. If offset can no longer become durable it returns at once
// (a Wait in progress wakes): ErrClosed once the log is closed; once the
// log has stopped taking appends (a failed write, fdatasync, roll or
// truncation), that failure, until the log is reopened.
func (l *Log) Wait(ctx context.Context, offset uint64) error {
	return l.waitUntil(ctx, func() (bool, error) {
		if l.DurableOffset() > offset {
			return true, nil
		}
		err := l.stopped()
		return err != nil, err
	})
}

// stopped returns why the log will make nothing more durable: ErrClosed,
// or the failure that stopped it; nil while it works (or is read-only and
// open, when its writer may still append).
func (l *Log) stopped() error {
	switch l.loadState() {
	case stateClosed:
		return ErrClosed
	case stateFailed:
		l.mu.RLock()
		defer l.mu.RUnlock()
		if l.failed != nil {
			return l.failed
		}
		if a := l.active; a != nil && a.w != nil {
			if err := a.w.Err(); err != nil {
				return fmt.Errorf("engine: segment %s stopped taking appends; reopen the log to recover: %w", a.path, err)
			}
		}
	}
	return nil
}

// waitUntil returns once check says it is done (with check's error),
// looking again whenever durability advances, a segment is sealed, the
// log's end is cut, the log fails or is closed; or when ctx is done.
func (l *Log) waitUntil(ctx context.Context, check func() (bool, error)) error {
	for {
		l.durMu.Lock()
		ch := l.durCh
		l.durWaited = true
		l.durMu.Unlock()
		if done, err := check(); done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}
