package wal

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
)

// SyncMode says when appended records are made durable.
type SyncMode int

const (
	// SyncAlways (the default): Append returns only after an fdatasync that
	// covers its records. Concurrent appends share writes and syncs.
	SyncAlways SyncMode = iota
	// SyncInterval: Append returns once its records are in the write
	// buffer; an fdatasync runs at least every Options.SyncInterval. A crash
	// loses at most about one interval of acknowledged records.
	SyncInterval
	// SyncNever: Append returns once its records are in the write buffer;
	// fdatasync runs only on Sync, Close, or when MaxWrite bytes are
	// unsynced. Unsafe for anything but bulk loads that can be redone.
	SyncNever
)

func (m SyncMode) String() string {
	switch m {
	case SyncAlways:
		return "always"
	case SyncInterval:
		return "interval"
	case SyncNever:
		return "never"
	}
	return fmt.Sprintf("SyncMode(%d)", int(m))
}

// Options configure a Writer. The zero value is valid.
type Options struct {
	// SyncMode: default SyncAlways.
	SyncMode SyncMode
	// SyncInterval for SyncInterval mode. Default 10ms.
	SyncInterval time.Duration
	// MaxWrite is the size of each of the writer's two buffers and the
	// largest single device write, in bytes; a batch must fit in one write
	// with a block to spare. It is recorded in the file header at Create
	// (recovery uses it to bound a torn tail) and taken from there on Open.
	// Default 4 MiB; rounded down to a multiple of the device block, at
	// least 4 blocks.
	MaxWrite int
	// Preallocate reserves this many bytes (file header included) at
	// Create. Default 0: the file grows with each write.
	Preallocate int64
	// PreZero writes zeros over the preallocated space at Create, so later
	// fdatasyncs overwrite blocks instead of converting unwritten extents
	// (measured here: ~1.5-2x cheaper small durable appends).
	PreZero bool
	// Now is the clock for frame timestamps. Default time.Now.
	Now func() time.Time
	// Version is the format version Create writes the file in, from
	// MinVersion to Version (default 0: Version), for tools and tests
	// that need a file an older build reads. Open appends to a file in
	// the file's own version, whatever this says. A file older than
	// HighWaterVersion gets no high-water mark.
	Version uint32
	// OnReserve, if set, is called for every records frame when room for
	// it is reserved: in file order, with the writer's lock held, with the
	// frame's first offset, position, timestamp and records (which it must
	// not keep). It must be quick and must not call the Writer. (The engine
	// builds its position index with it.)
	OnReserve func(first uint64, pos int64, ts int64, records [][]byte)
	// OnDurable, if set, is called with the new durable position and offset
	// each time they advance, with the writer's lock held. It must be quick
	// and must not call the Writer. (The engine wakes tailing readers.) The
	// position is where the durable records end: a footer frame made durable
	// by Seal is never reported (readers must not look past the records,
	// and the footer's bytes stop being frames once Seal cuts the file).
	OnDurable func(pos int64, offset uint64)
	// OnFlush, if set, is called after each flush that wrote a buffer,
	// with the appends it carried (the group-commit batch) and the
	// fdatasync's duration (0 if it did not sync). Under the writer's
	// lock: keep it short.
	OnFlush func(appends int, sync time.Duration)
	// OnFail, if set, is called once, with the sticky error, when a write
	// or fdatasync fails and the writer stops (Err returns it from then
	// on). Under the writer's lock: keep it short, do not call the Writer.
	// (The engine wakes callers waiting for durability that will not come.)
	OnFail func(err error)

	// Buffers, if set, lends the writer its two write buffers (MaxWrite
	// bytes each), and takes them back when the writer is closed or
	// sealed: the writers of one log share one, so a roll's new writer
	// takes the buffers of one retired before instead of allocating (and
	// the runtime clearing) its own on its first appends.
	Buffers *Buffers

	// highWaterStep replaces HighWaterStep if positive: tests make marks
	// bind in small files.
	highWaterStep int64
}

// DefaultMaxWrite is Options.MaxWrite's default, in bytes.
const DefaultMaxWrite = 4 << 20

func (o Options) withDefaults() Options {
	if o.SyncInterval <= 0 {
		o.SyncInterval = 10 * time.Millisecond
	}
	if o.MaxWrite == 0 {
		o.MaxWrite = DefaultMaxWrite
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.highWaterStep <= 0 {
		o.highWaterStep = HighWaterStep
	}
	return o
}

// Stats counts a writer's work since it was opened.
type Stats struct {
	Appends    int64         // acknowledged Append calls (batches)
	Records    int64         // records in them
	FrameBytes int64         // bytes of frames appended
	Writes     int64         // device writes (one per flush)
	WriteBytes int64         // bytes written, tail-block rewrites and padding included
	Syncs      int64         // fdatasync calls
	SyncTime   time.Duration // total time spent in fdatasync
	// MarkWrites counts writes of the high-water mark (a sector of the
	// header block; not in Writes): each rides on a flush's fdatasync.
	MarkWrites int64
}

// Writer appends batches of records to one wal file.
//
// Group commit: many goroutines may call Append at once. Each reserves room
// for its frame in a shared aligned buffer under the lock, encodes (copies)
// its records outside the lock, then waits until the frame is durable. In
// SyncAlways mode there is no flusher goroutine: the first waiter that finds
// no flush in progress becomes the leader, takes the whole buffer (every
// frame reserved so far, its own and others'), and does the one O_DIRECT
// write and the one fdatasync for all of them; the others wait on the cond
// and one of them leads the next flush. A leader first lingers, up to a
// quarter of the recent flush time, until as many appends are pending as
// the last group had: without it, appenders split into two cohorts that
// alternate flushes at half the possible batch. In the other modes a
// background goroutine leads the flushes.
//
// While a flush is in flight new frames go to the second buffer, which
// starts with a copy of the partial last block; the next flush rewrites that
// block. See ARCHITECTURE.md for why rewriting it is safe.
//
// All methods are safe for concurrent use. The Writer does not own the
// device: close the device after Close.
type Writer struct {
	dev      blockdev.Device
	hdr      FileHeader
	opts     Options
	blk      int64 // write unit, the device's Block
	maxWrite int64 // buffer size, <= hdr.MaxWrite
	maxFrame int   // largest frame that always fits in a buffer

	background chan struct{} // closed when the background flusher exits; nil in SyncAlways
	tickerStop chan struct{}

	mu   sync.Mutex
	cond *sync.Cond // signals any change of the state below
	// Guarded by mu.
	cur        *wbuf // the buffer appenders reserve space in
	spare      *wbuf // the other buffer; nil while a write of it is in flight
	taking     bool  // a leader is taking cur: no reservations in it until the swap
	flushing   bool  // a leader holds the device (only it writes or syncs)
	lingering  bool  // a would-be leader is lingering for its group
	nextOffset uint64
	lastTime   int64
	written    int64  // file position covered by completed writes
	writtenOff uint64 // offset after the records those writes hold
	durable    int64  // file position covered by a completed fdatasync
	durableOff uint64
	footerAt   int64         // position of the footer frame Seal reserved; 0 before
	reported   int64         // the durable records' end last passed to OnDurable
	syncWanted bool          // a Sync, Close or the interval ticker asks for fdatasync
	group      int           // appends the last flush carried plus those pending at its end
	flushTime  time.Duration // moving average of write+sync time
	mark       highWater     // changed only by the leader (or before the writer is shared)
	err        error         // sticky: the first write or sync failure
	closing    bool
	stats      Stats
	// sleepers are the goroutines waiting in awaitDurableLocked for a
	// flush (or a linger) to end; wakes counts their wake-ups (tests).
	sleepers int
	wakes    int64
}

// highWater is the writer's view of the file's high-water mark.
type highWater struct {
	durable int64 // a mark made durable: no write reaches past it
	written int64 // the mark last written (>= durable): durable after the next fdatasync
	// unit holds the device block that contains the mark (with the file
	// header when the block starts at 0), at unitAt; nil until the writer
	// first writes a mark after an open.
	unit   []byte
	unitAt int64
	writes int64 // marks written since the writer opened
}

// wbuf is an aligned buffer holding the file bytes [start, end).
type wbuf struct {
	b       []byte
	start   int64 // block aligned
	end     int64
	endOff  uint64 // the offset after the last record reserved in it
	appends int    // Append calls that reserved room in it
	users   int    // appenders still encoding into b
}

// Create writes a new file header (base is the offset of the first record),
// preallocates, fdatasyncs, and returns a writer positioned at the first
// frame. The device must be empty. Making the file's name durable (a
// directory fsync) is the caller's commit point.
func Create(dev blockdev.Device, base uint64, opts Options) (*Writer, error) {
	opts = opts.withDefaults()
	if size, err := dev.Size(); err != nil {
		return nil, fmt.Errorf("wal: create %s: %w", dev.Name(), err)
	} else if size != 0 {
		return nil, fmt.Errorf("wal: create %s: device is not empty (%d bytes); use Open", dev.Name(), size)
	}
	return create(dev, base, opts, false)
}

// create writes the header (and preallocates, unless the device was
// prepared), fdatasyncs, and returns the writer.
func create(dev blockdev.Device, base uint64, opts Options, prepared bool) (*Writer, error) {
	blk := int64(dev.Alignment().Block)
	maxWrite, err := writeSize(opts.MaxWrite, blk)
	if err != nil {
		return nil, fmt.Errorf("wal: create %s: %w", dev.Name(), err)
	}
	if opts.Version != 0 && (opts.Version < MinVersion || opts.Version > Version) {
		return nil, fmt.Errorf("wal: create %s: format version %d: this build writes %d to %d", dev.Name(), opts.Version, MinVersion, Version)
	}
	hdr := FileHeader{Version: cmp.Or(opts.Version, Version), SegmentID: rand.Uint64() | 1, BaseOffset: base, Created: opts.Now().UnixNano(), MaxWrite: uint32(maxWrite)}
	head := dev.Alignment().Alloc(int(alignedbuf.AlignUp(DataStart, blk)))
	EncodeFileHeader(head, hdr)
	var hw int64
	if hdr.HasHighWater() && marksFit(dev.Alignment()) {
		hw = nextHighWater(DataStart, maxWrite, blk, opts.highWaterStep)
		encodeHighWater(head[HighWaterPos:], hdr.SegmentID, hw)
	}
	if _, err := dev.WriteAt(head, 0); err != nil {
		return nil, fmt.Errorf("wal: create %s: write header: %w", dev.Name(), err)
	}
	if !prepared {
		if err := preallocate(dev, int64(len(head)), opts, nil); err != nil {
			return nil, err
		}
	}
	if err := dev.Sync(); err != nil {
		return nil, fmt.Errorf("wal: create %s: %w", dev.Name(), err)
	}
	w, err := newWriter(dev, hdr, DataStart, base, 0, hw, opts, true)
	if err == nil && hw > 0 { // the block holding the mark, for its next write: no read
		w.mark.unit = head[:markUnitEnd(dev.Alignment())]
	}
	return w, err
}

// Prepare reserves size bytes of dev, zeroing them if zero is set, and
// fdatasyncs, so that a later CreatePrepared needs only to write a header:
// callers prepare the next file in the background while the current one
// fills. Zeroed blocks make small durable appends cheaper (their fdatasync
// overwrites instead of converting unwritten extents); for appends large
// enough to be bandwidth-bound the zeroing only doubles the bytes written.
//
// pace, if not nil, is called before each write of zeros (ZeroChunk bytes
// at most) with the bytes zeroed so far; it may wait, to spread the
// zeroing, and an error from it stops Prepare with that error.
func Prepare(dev blockdev.Device, size int64, zero bool, pace func(done int64) error) error {
	if err := preallocate(dev, 0, Options{Preallocate: size, PreZero: zero}, pace); err != nil {
		return err
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("wal: prepare %s: %w", dev.Name(), err)
	}
	return nil
}

// CreatePrepared is Create on a device made by Prepare (all zeros): it
// writes and fdatasyncs the header only. Options.Preallocate is ignored.
func CreatePrepared(dev blockdev.Device, base uint64, opts Options) (*Writer, error) {
	opts = opts.withDefaults()
	return create(dev, base, opts, true)
}

// ZeroChunk is the largest write of zeros Prepare makes when paced: each
// fdatasync of the file being appended to also flushes the zeros written
// since the last one, so smaller pieces spread that cost thin.
const ZeroChunk = 128 << 10

func preallocate(dev blockdev.Device, from int64, opts Options, pace func(done int64) error) error {
	blk := int64(dev.Alignment().Block)
	end := alignedbuf.AlignUp(opts.Preallocate, blk)
	if end <= from {
		return nil
	}
	if !opts.PreZero {
		if err := dev.Allocate(0, end); err != nil {
			return fmt.Errorf("wal: preallocate %s to %d bytes: %w", dev.Name(), end, err)
		}
		return nil
	}
	chunk := int64(scanChunk)
	if pace != nil {
		chunk = ZeroChunk
	}
	zero := dev.Alignment().Alloc(int(min(chunk, end-from)))
	for p := from; p < end; {
		if pace != nil {
			if err := pace(p - from); err != nil {
				return err
			}
		}
		n := min(int64(len(zero)), end-p)
		if _, err := dev.WriteAt(zero[:n], p); err != nil {
			return fmt.Errorf("wal: pre-zero %s at %d: %w", dev.Name(), p, err)
		}
		p += n
	}
	return nil
}

// writeSize turns the requested MaxWrite into a usable buffer size.
func writeSize(req int, blk int64) (int64, error) {
	n := alignedbuf.AlignDown(int64(req), blk)
	if n < 4*blk {
		return 0, fmt.Errorf("MaxWrite %d is too small for device block %d: use at least %d", req, blk, 4*blk)
	}
	if n > MaxFramePayload {
		n = MaxFramePayload
	}
	return n, nil
}

// Open recovers an existing file and returns a writer positioned after its
// last valid frame. A torn tail is cut (zeroed and synced) and reported in
// the Recovery; corruption is returned as a *CorruptionError and the file is
// left untouched.
func Open(dev blockdev.Device, opts Options) (*Writer, *Recovery, error) {
	rec, err := Recover(dev)
	if err != nil {
		return nil, nil, err
	}
	w, err := Resume(dev, rec, opts)
	if err != nil {
		return nil, rec, err
	}
	return w, rec, nil
}

// Resume is Open for a caller that has just scanned the file itself: rec
// must be the Recovery of a complete scan of this device (Recover, or a
// Scanner run to its end) with nothing written since. It saves a second
// scan.
func Resume(dev blockdev.Device, rec *Recovery, opts Options) (*Writer, error) {
	opts = opts.withDefaults()
	if rec.Footer != nil {
		return nil, fmt.Errorf("wal: open %s for writing: %w", dev.Name(), ErrSealed)
	}
	if rec.Torn != nil {
		if err := cutTail(dev, rec.Torn); err != nil {
			return nil, err
		}
	}
	// The header's MaxWrite bounds what recovery will accept as torn, so the
	// writer must never issue a larger write: it takes the header's value.
	opts.MaxWrite = int(rec.Header.MaxWrite)
	return newWriter(dev, rec.Header, rec.End, rec.NextOffset, rec.LastTime, rec.HighWater, opts, false)
}

// cutTail zeroes the torn bytes and syncs: the commit point of the cut.
func cutTail(dev blockdev.Device, t *TornTail) error {
	if err := Cut(dev, t.Pos, t.Pos+t.Bytes); err != nil {
		return fmt.Errorf("wal: cut torn tail: %w", err)
	}
	return nil
}

// Cut zeroes the file bytes [pos, end), keeping the bytes before pos in the
// first sector, and fdatasyncs: the commit point of dropping everything
// from pos on. pos must be a frame boundary (or a damaged footer's
// position); the file must have no writer.
func Cut(dev blockdev.Device, pos, end int64) error {
	if end <= pos {
		return dev.Sync()
	}
	a := dev.Alignment()
	off := int64(a.Offset)
	start := alignedbuf.AlignDown(pos, off)
	last := alignedbuf.AlignUp(end, off)
	buf := a.Alloc(int(min(last-start, scanChunk)))
	if _, err := dev.ReadAt(buf[:off], start); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("cut %s at %d: %w", dev.Name(), pos, err)
	}
	clear(buf[pos-start:])
	for p := start; p < last; {
		n := min(int64(len(buf)), last-p)
		if _, err := dev.WriteAt(buf[:n], p); err != nil {
			return fmt.Errorf("cut %s at %d: %w", dev.Name(), pos, err)
		}
		clear(buf[:off]) // only the first sector keeps old bytes
		p += n
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("cut %s at %d: %w", dev.Name(), pos, err)
	}
	return nil
}

// newWriter returns the writer of a file whose frames end at end and whose
// high-water mark is hw (0: none). synced says the caller has just
// fdatasynced everything in the file (Create); otherwise it is synced here,
// after a new mark is written if hw is not one the first flush may write
// below.
func newWriter(dev blockdev.Device, hdr FileHeader, end int64, next uint64, lastTime int64, hw int64, opts Options, synced bool) (*Writer, error) {
	blk := int64(dev.Alignment().Block)
	maxWrite, err := writeSize(int(hdr.MaxWrite), blk)
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dev.Name(), err)
	}
	w := &Writer{
		dev: dev, hdr: hdr, opts: opts, blk: blk, maxWrite: maxWrite,
		maxFrame:   int(maxWrite - blk),
		nextOffset: next, lastTime: lastTime,
		written: end, writtenOff: next, durable: end, durableOff: next, reported: end,
		mark: highWater{durable: hw, written: hw},
	}
	w.cond = sync.NewCond(&w.mu)
	// The two MaxWrite buffers are allocated at the first append
	// (reserveLocked, takeLocked), not here: a writer that is opened and
	// closed, as every clean open and close of a log does to its last
	// segment, never touches them (measured: a clean open of a 1 GiB log
	// took 4.4-7.0 ms of CPU with them, 3.3-4.0 without). Until then cur
	// holds only the partial last block.
	w.cur = &wbuf{b: dev.Alignment().Alloc(int(blk)), start: alignedbuf.AlignDown(end, blk), end: end, endOff: next}
	w.spare = &wbuf{}
	// Load the partial last block: the next flush rewrites it.
	if tail := end - w.cur.start; tail > 0 {
		if _, err := dev.ReadAt(w.cur.b[:blk], w.cur.start); err != nil && !errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("wal: open %s: read tail block at %d: %w", dev.Name(), w.cur.start, err)
		}
		clear(w.cur.b[tail:blk])
	}
	// What recovery read may still sit in a volatile cache (a previous
	// process may have died between its write and its sync): make it durable
	// before anything is built on it. A file just created was synced by
	// Create: a second fdatasync there cost every roll one more sync.
	fits := hdr.HasHighWater() && marksFit(dev.Alignment())
	if !synced && !fits {
		// A mark in the file that this writer cannot move (made on another
		// device), or must not keep (a file of a version without marks,
		// marked by a build that predated the version that added them):
		// drop it (recovery then reads the whole file). Nothing else
		// writes yet, so the frames the write holds are rewritten as they
		// are.
		if err := w.mark.load(w, true); err != nil {
			return nil, fmt.Errorf("wal: open %s: %w", dev.Name(), err)
		}
		if b := w.mark.unit[HighWaterPos-w.mark.unitAt:][:HighWaterLen]; !isZero(b) {
			clear(b)
			if _, err := dev.WriteAt(w.mark.unit, w.mark.unitAt); err != nil {
				return nil, fmt.Errorf("wal: open %s: drop the high-water mark: %w", dev.Name(), err)
			}
		}
	}
	if !fits {
		w.mark = highWater{durable: noMark, written: noMark}
	}
	if !synced {
		// A caller that did not scan (an open from a clean close record)
		// does not know the mark: read it.
		if hw == 0 && fits {
			if err := w.mark.load(w, true); err != nil {
				return nil, fmt.Errorf("wal: open %s: %w", dev.Name(), err)
			}
			hw = w.mark.durable
		}
		// Recovery proved the file zero from end on up to the old mark (or
		// to its end), so a new mark anywhere past end is a bound: set one
		// that the first flush stays below, made durable by this sync.
		if wend := alignedbuf.AlignUp(end, blk); fits && wend+maxWrite > hw {
			hw = nextHighWater(wend, maxWrite, blk, opts.highWaterStep)
			if err := w.mark.write(w, hw); err != nil {
				return nil, fmt.Errorf("wal: open %s: %w", dev.Name(), err)
			}
			w.mark.durable = hw
		}
		if err := dev.Sync(); err != nil {
			return nil, fmt.Errorf("wal: open %s: %w", dev.Name(), err)
		}
	}
	if opts.SyncMode != SyncAlways {
		w.background = make(chan struct{})
		go w.flushInBackground()
	}
	if opts.SyncMode == SyncInterval {
		w.tickerStop = make(chan struct{})
		go w.tick(opts.SyncInterval)
	}
	return w, nil
}

// Header returns the file header.
func (w *Writer) Header() FileHeader { return w.hdr }

// MaxBatchBytes is the largest payload (PayloadSize of the records) one
// Append accepts.
func (w *Writer) MaxBatchBytes() int { return w.maxFrame - FrameHeaderLen }

// BatchFits reports whether records fit one frame of a writer created
// with Options.MaxWrite maxWrite on a device of block size blk (an Append
// of them to such a writer does not fail with ErrBatchTooLarge).
func BatchFits(records [][]byte, maxWrite int, blk int64) bool {
	mw, err := writeSize(maxWrite, blk)
	return err == nil && FrameSize(PayloadSize(records)) <= int(mw-blk)
}

// Append writes records as one frame and returns the offset of the first.
// The records are copied; the caller may reuse them when Append returns. In
// SyncAlways mode Append returns after the frame is durable; otherwise once
// it is in the write buffer. After any write or sync failure every call
// returns an error wrapping ErrFailed and the cause.
func (w *Writer) Append(records ...[]byte) (first uint64, err error) {
	if len(records) == 0 {
		return 0, ErrEmptyBatch
	}
	for i, r := range records {
		if len(r) > MaxRecordSize {
			return 0, fmt.Errorf("%w: record %d is %d bytes, the limit is %d", ErrRecordTooLarge, i, len(r), MaxRecordSize)
		}
	}
	plen := w.hdr.PayloadSize(records)
	size := FrameSize(plen)
	if size > w.maxFrame {
		return 0, fmt.Errorf("%w: %d records of %d bytes in all; at most %d bytes per batch with MaxWrite %d: split the batch",
			ErrBatchTooLarge, len(records), plen, w.MaxBatchBytes(), w.maxWrite)
	}

	w.mu.Lock()
	r, err := w.reserveLocked(size, records)
	w.mu.Unlock()
	if err != nil {
		return 0, err
	}
	buf, pos := r.buf, r.pos

	encodeFrame(buf.b[pos-buf.start:], w.hdr.Version, w.hdr.SegmentID, pos, r.durable, r.first, r.ts, records)

	w.mu.Lock()
	defer w.mu.Unlock()
	buf.users--
	w.encodedLocked(buf)
	if w.opts.SyncMode == SyncAlways {
		if err := w.awaitDurableLocked(pos+int64(size), true); err != nil {
			return 0, err
		}
	}
	w.stats.Appends++
	w.stats.Records += int64(len(records))
	w.stats.FrameBytes += int64(size)
	return r.first, nil
}

// reservation is the room reserveLocked made for one frame.
type reservation struct {
	buf     *wbuf
	pos     int64  // the frame's position
	first   uint64 // offset of its first record
	ts      int64  // its timestamp
	durable int64  // the frame's durable mark: the durable end at reservation (-1: the file has no marks)
}

// reserveLocked waits for room for a frame of size bytes holding records
// (none for a footer) in the current buffer, reserves it, and assigns offsets, a timestamp and
// the durable mark. The caller encodes into r.buf at r.pos and then
// decrements r.buf.users.
func (w *Writer) reserveLocked(size int, records [][]byte) (r reservation, err error) {
	n := len(records)
	for {
		if w.err != nil {
			return r, w.err
		}
		if w.closing {
			return r, ErrClosed
		}
		if !w.taking && len(w.cur.b) < int(w.maxWrite) {
			// The first append: nobody encodes into cur yet (users is
			// only raised below), and its bytes are the last block.
			b := w.opts.Buffers.get(int(w.maxWrite), w.dev.Alignment())
			copy(b, w.cur.b)
			w.cur.b = b
		}
		if !w.taking && w.cur.end+int64(size) <= w.cur.start+int64(len(w.cur.b)) {
			break
		}
		// The buffer is full: flush it (or wait for the flush under way).
		if !w.flushing {
			w.leadLocked(w.opts.SyncMode == SyncAlways)
			continue
		}
		w.cond.Wait()
	}
	buf := w.cur
	r = reservation{buf: buf, pos: buf.end, first: w.nextOffset, durable: -1}
	if w.hdr.Version >= 2 {
		// durable only grows while this writer lives, so it is a lower bound
		// of the durable end when the frame reaches the device.
		r.durable = w.durable
	}
	w.nextOffset += uint64(n)
	buf.end += int64(size)
	buf.endOff = w.nextOffset
	buf.appends++
	buf.users++
	r.ts = max(w.opts.Now().UnixNano(), w.lastTime) // frame times never go back
	w.lastTime = r.ts
	if n > 0 && w.opts.OnReserve != nil {
		w.opts.OnReserve(r.first, r.pos, r.ts, records)
	}
	return r, nil
}

// Seal appends a footer frame carrying footer (the caller's index; at most
// MaxBatchBytes-FooterTailLen bytes), makes it durable, cuts the file to end
// exactly at the footer, syncs again, and closes the writer. The final
// fdatasync is the seal's commit point; a crash before it leaves either an
// unsealed file (the footer torn and cut on open) or a sealed one followed
// by zeros (the truncate not yet done), which scanners accept.
func (w *Writer) Seal(footer []byte) (*Footer, error) {
	size := FooterFrameSize(len(footer))
	if size > w.maxFrame {
		return nil, fmt.Errorf("%w: footer of %d bytes, at most %d with MaxWrite %d", ErrBatchTooLarge, len(footer), w.maxFrame-FrameHeaderLen-FooterTailLen, w.maxWrite)
	}
	w.mu.Lock()
	// The records first: then the footer's durable mark vouches for every
	// one of them (recovery can tell damage to them from a torn seal).
	if err := w.awaitDurableLocked(w.cur.end, false); err != nil {
		w.mu.Unlock()
		return nil, err
	}
	r, err := w.reserveLocked(size, nil)
	if err != nil {
		w.mu.Unlock()
		return nil, err
	}
	w.closing = true // nothing may follow the footer
	w.footerAt = r.pos
	w.mu.Unlock()
	buf, pos, next, ts := r.buf, r.pos, r.first, r.ts

	EncodeFooter(buf.b[pos-buf.start:], w.hdr.SegmentID, pos, r.durable, next, ts, footer)
	crc := binary.LittleEndian.Uint32(buf.b[pos-buf.start:])

	w.mu.Lock()
	buf.users--
	w.encodedLocked(buf)
	err = w.awaitDurableLocked(pos+int64(size), false)
	if err == nil {
		err = w.err
	}
	w.mu.Unlock()
	w.stopBackground()
	if err != nil {
		return nil, err
	}
	w.lendBack()
	end := pos + int64(size)
	if err := w.dev.Truncate(end); err != nil {
		return nil, fmt.Errorf("wal: seal %s: %w", w.dev.Name(), err)
	}
	if err := w.dev.Sync(); err != nil {
		return nil, fmt.Errorf("wal: seal %s: fdatasync after truncate: %w", w.dev.Name(), err)
	}
	return &Footer{Pos: pos, End: end, Next: next, Time: ts, Checksum: crc, Data: append([]byte(nil), footer...)}, nil
}

// encodedLocked wakes whoever waits for the frame just encoded into buf:
// a leader taking buf (once no encoder is left), a lingering leader (once
// its group is there) and the background flusher (new bytes to write).
// Nobody else does: appenders waiting for a flush to end would wake at
// every other appender's frame only to wait again, which with 16
// appenders cost more CPU than the appends themselves.
func (w *Writer) encodedLocked(buf *wbuf) {
	if (w.taking && buf.users == 0) || (w.lingering && w.cur.appends >= w.group) || w.background != nil {
		w.cond.Broadcast()
	}
}

// awaitDurableLocked returns once the file is durable up to end, leading
// flushes itself whenever no other goroutine is.
func (w *Writer) awaitDurableLocked(end int64, linger bool) error {
	for w.durable < end && w.err == nil {
		if w.flushing || w.lingering {
			w.sleepers++
			w.cond.Wait()
			w.sleepers--
			w.wakes++
			continue
		}
		if linger {
			w.lingerLocked()
			if w.durable >= end || w.flushing || w.err != nil {
				continue // another goroutine flushed while we lingered
			}
		}
		w.leadLocked(true)
	}
	if w.durable < end {
		return w.err
	}
	return nil
}

// lingerLocked waits, at most a quarter of the recent flush time, until as
// many appends are pending as the last group carried. A lone appender
// (group 1) never waits.
func (w *Writer) lingerLocked() {
	if w.cur.appends >= w.group || w.flushTime <= 0 {
		return
	}
	expired := false
	t := time.AfterFunc(w.flushTime/4, func() {
		w.mu.Lock()
		expired = true
		w.cond.Broadcast()
		w.mu.Unlock()
	})
	w.lingering = true
	for !expired && !w.flushing && w.cur.appends < w.group && w.err == nil {
		w.cond.Wait()
	}
	w.lingering = false
	w.cond.Broadcast()
	t.Stop()
}

// leadLocked performs one flush as the leader: it takes the current buffer,
// writes it, and syncs if doSync (or if asked to). It is called with mu
// held and flushing false, and returns with mu held.
func (w *Writer) leadLocked(doSync bool) {
	w.flushing = true
	buf := w.takeLocked()
	doSync = doSync || w.syncWanted || w.closing
	if buf == nil && w.durable == w.written {
		doSync = false // nothing new to make durable
	}
	w.syncWanted = false
	durable, written, writtenOff := w.durable, w.written, w.writtenOff
	mark := w.mark
	w.mu.Unlock()

	start := time.Now()
	var wrote int64
	var presynced bool
	var err error
	if buf != nil {
		wrote, presynced, err = w.write(buf, durable, &mark)
	}
	var syncTime time.Duration
	if err == nil && doSync {
		syncStart := time.Now()
		if err = w.dev.Sync(); err != nil {
			err = fmt.Errorf("fdatasync %s: %w", w.dev.Name(), err)
		}
		syncTime = time.Since(syncStart)
	}
	elapsed := time.Since(start)

	w.mu.Lock()
	w.flushing = false
	w.cond.Broadcast()
	w.mark = mark
	w.stats.MarkWrites = mark.writes
	if err == nil && doSync {
		w.mark.durable = w.mark.written
	}
	if err != nil {
		first := w.err == nil
		w.err = fmt.Errorf("%w: %w", ErrFailed, err)
		if first && w.opts.OnFail != nil {
			w.opts.OnFail(w.err)
		}
		return
	}
	if presynced {
		w.durable, w.durableOff = written, writtenOff
		w.stats.Syncs++
	}
	if buf != nil {
		w.written, w.writtenOff = buf.end, buf.endOff
		w.group = buf.appends + w.cur.appends
		w.spare = buf
		w.stats.Writes++
		w.stats.WriteBytes += wrote
		w.flushTime += (elapsed - w.flushTime) / 8
	}
	if doSync {
		w.durable, w.durableOff = w.written, w.writtenOff
		w.stats.Syncs++
		w.stats.SyncTime += syncTime
	}
	if presynced || doSync {
		w.reportDurableLocked()
	}
	if buf != nil && w.opts.OnFlush != nil {
		w.opts.OnFlush(buf.appends, syncTime)
	}
}

// reportDurableLocked passes where the durable records end to OnDurable,
// if that advanced. A durable footer is not records: between its fdatasync
// and Seal's truncate, readers that looked past the records would find the
// footer frame where they expect records (and after the truncate, the end
// of the file).
func (w *Writer) reportDurableLocked() {
	pos := w.durable
	if w.footerAt > 0 {
		pos = min(pos, w.footerAt)
	}
	if pos > w.reported && w.opts.OnDurable != nil {
		w.reported = pos
		w.opts.OnDurable(pos, w.durableOff)
	}
}

// takeLocked hands the current buffer to the leader and makes the spare
// current, starting with a copy of the partial last block. It returns nil if
// there is nothing new to write.
func (w *Writer) takeLocked() *wbuf {
	if w.cur.end == w.written {
		return nil
	}
	w.taking = true
	for w.cur.users > 0 {
		w.cond.Wait()
	}
	buf, next := w.cur, w.spare
	if next.b == nil {
		next.b = w.opts.Buffers.get(int(w.maxWrite), w.dev.Alignment())
	}
	tail := alignedbuf.AlignDown(buf.end, w.blk)
	copy(next.b, buf.b[tail-buf.start:buf.end-buf.start])
	next.start, next.end, next.endOff, next.appends, next.users = tail, buf.end, buf.endOff, 0, 0
	w.cur, w.spare, w.taking = next, nil, false
	w.cond.Broadcast()
	return buf
}

// write issues the single device write for buf, padding its last block with
// zeros. It first syncs if the write would reach past the durable
// high-water mark (writing a new mark before, if none covers it: the only
// case in which an append waits for two rounds; it does not arise while
// every flush syncs), or, in modes that do not sync every flush, if the
// write would leave more than maxWrite bytes unsynced past the durable
// end: the bounds recovery relies on to tell a torn tail from corruption
// and to know where to stop reading. If the write ends within maxWrite of
// the mark written, it writes a new mark beside it, which the flush's
// fdatasync (or the next one, before any write that needs it) makes
// durable. It updates mark and returns the bytes written and whether it
// synced first.
func (w *Writer) write(buf *wbuf, durable int64, mark *highWater) (n int64, presynced bool, err error) {
	wend := alignedbuf.AlignUp(buf.end, w.blk)
	clear(buf.b[buf.end-buf.start : wend-buf.start])
	presync := func() error {
		if err := w.dev.Sync(); err != nil {
			return fmt.Errorf("fdatasync %s: %w", w.dev.Name(), err)
		}
		presynced, mark.durable = true, mark.written
		return nil
	}
	if wend > mark.durable {
		if wend > mark.written {
			if err := mark.write(w, w.nextHighWater(wend)); err != nil {
				return 0, false, err
			}
		}
		if err := presync(); err != nil {
			return 0, false, err
		}
	}
	if !presynced && w.opts.SyncMode != SyncAlways && wend-alignedbuf.AlignDown(durable, w.blk) > w.maxWrite {
		if err := presync(); err != nil {
			return 0, false, err
		}
	}
	var markDone chan error
	hw := mark.written
	if wend+w.maxWrite > mark.written {
		// The next flush may end past the mark: move it now, beside this
		// write, so that this flush's fdatasync covers both.
		markDone = make(chan error, 1)
		next, m := w.nextHighWater(wend), *mark
		hw = next
		go func() { markDone <- m.write(w, next) }()
		defer func() {
			if merr := <-markDone; merr != nil {
				err = cmp.Or(err, merr)
			} else {
				*mark = m
			}
		}()
	}
	if buf.start == 0 {
		// A device block larger than the header block: this write
		// rewrites the header block too (as read when the writer opened),
		// so it carries the newest mark, the same bytes as the mark's own
		// write, whichever of the two lands last.
		if hw < noMark {
			encodeHighWater(buf.b[HighWaterPos:], w.hdr.SegmentID, hw)
		} else {
			clear(buf.b[HighWaterPos : HighWaterPos+HighWaterLen])
		}
	}
	m, err := w.dev.WriteAt(buf.b[:wend-buf.start], buf.start)
	if err != nil {
		return 0, presynced, fmt.Errorf("write %s at %d (%d bytes): %w", w.dev.Name(), buf.start, wend-buf.start, err)
	}
	return int64(m), presynced, nil
}

// nextHighWater is the mark a writer sets when a write ending at wend
// comes within maxWrite of the current one: far enough that the next write
// (at most maxWrite further) stays below it, and HighWaterStep more, so
// that marks are rare.
func nextHighWater(wend, maxWrite, blk, step int64) int64 {
	return alignedbuf.AlignUp(wend+maxWrite+step, blk)
}

func (w *Writer) nextHighWater(wend int64) int64 {
	return nextHighWater(wend, w.maxWrite, w.blk, w.opts.highWaterStep)
}

// write writes hw as the file's high-water mark (not synced) and records it
// as written. The first write after an open reads the device block
// holding the mark if that unit holds the file header too, which it then
// rewrites with the same bytes.
func (m *highWater) write(w *Writer, hw int64) error {
	if m.unit == nil {
		if err := m.load(w, false); err != nil {
			return err
		}
	}
	encodeHighWater(m.unit[HighWaterPos-m.unitAt:], w.hdr.SegmentID, hw)
	if _, err := w.dev.WriteAt(m.unit, m.unitAt); err != nil {
		return fmt.Errorf("write the high-water mark of %s (%d): %w", w.dev.Name(), hw, err)
	}
	m.written = hw
	m.writes++
	return nil
}

// markUnitEnd is where the write of the mark ends: the end of the device
// block holding it, but never past the header block (a larger block holds
// frames, which the mark's write must not rewrite), nor short of the
// device's direct I/O unit.
func markUnitEnd(a blockdev.Alignment) int64 {
	return min(alignedbuf.AlignUp(HighWaterPos+HighWaterLen, int64(a.Block)),
		max(DataStart, alignedbuf.AlignUp(HighWaterPos+HighWaterLen, int64(a.Offset))))
}

// marksFit reports whether a device can write the mark without rewriting
// frames: its direct I/O unit fits in the header block. On a device whose
// unit is larger (a 16 KiB page as that unit), the writer keeps no mark
// and recovery reads the whole file.
func marksFit(a blockdev.Alignment) bool { return markUnitEnd(a) <= DataStart }

// noMark is the writer's mark where it keeps none: no write reaches it.
const noMark = 1 << 62

// load reads the device block that holds the mark, if it holds the
// file header too or decode is set (then it also takes the mark found as
// durable and written; a damaged one counts as none: the caller writes a
// new one).
func (m *highWater) load(w *Writer, decode bool) error {
	// A whole block: a smaller direct write makes the device (and ext4,
	// which serializes direct writes that are not block aligned)
	// read-modify-write.
	a := w.dev.Alignment()
	m.unitAt = alignedbuf.AlignDown(HighWaterPos, int64(a.Block))
	m.unit = a.Alloc(int(markUnitEnd(a) - m.unitAt))
	if m.unitAt >= FileHeaderLen && !decode {
		return nil
	}
	if n, err := w.dev.ReadAt(m.unit, m.unitAt); n < len(m.unit) {
		want := len(m.unit)
		m.unit = nil
		return fmt.Errorf("read the header block of %s at %d for its high-water mark: %d of %d bytes: %w", w.dev.Name(), m.unitAt, n, want, cmp.Or(err, io.ErrUnexpectedEOF))
	}
	if hw, err := decodeHighWater(m.unit[HighWaterPos-m.unitAt:], w.hdr.SegmentID); err == nil && decode {
		m.durable, m.written = hw, hw
	}
	return nil
}

// flushInBackground leads flushes in SyncInterval and SyncNever modes,
// where Append does not wait.
func (w *Writer) flushInBackground() {
	defer close(w.background)
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.err == nil {
		if w.flushing || !(w.cur.end > w.written || (w.syncWanted && w.durable < w.written)) {
			if w.closing {
				return
			}
			w.cond.Wait()
			continue
		}
		w.leadLocked(false)
	}
}

func (w *Writer) tick(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.tickerStop:
			return
		case <-t.C:
			w.mu.Lock()
			if w.durable < w.cur.end {
				w.syncWanted = true
				w.cond.Broadcast()
			}
			w.mu.Unlock()
		}
	}
}

// Sync returns once every record appended before the call is durable, or
// the sticky error if the writer has failed.
func (w *Writer) Sync() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.awaitDurableLocked(w.cur.end, false); err != nil {
		return err
	}
	return w.err
}

// LastTime is the timestamp (unix nanoseconds) of the last frame
// appended; after Close, that of the file's last frame. A writer resumed
// on the file must be given it, so frame times never go back.
func (w *Writer) LastTime() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lastTime
}

// Durable returns the file position and the record offset below which
// everything is durable.
func (w *Writer) Durable() (pos int64, offset uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.durable, w.durableOff
}

// Written returns the file position and record offset below which
// everything has been written to the device (durable or not). Readers of the
// device must not look past it.
func (w *Writer) Written() (pos int64, offset uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.written, w.writtenOff
}

// NextOffset is the offset the next appended record will get.
func (w *Writer) NextOffset() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.nextOffset
}

// Err returns the sticky error, or nil while the writer is healthy.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Stats returns counters of the writer's work.
func (w *Writer) Stats() Stats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stats
}

// Close refuses new appends, writes and syncs everything appended before
// (whatever the SyncMode), stops the background goroutines, and returns the
// sticky error if the writer failed. It does not close the device.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		return ErrClosed
	}
	w.closing = true
	w.cond.Broadcast()
	// Appends that reserved room before closing are still encoding: the
	// flush waits for them (takeLocked), and their end is covered by cur.end.
	err := w.awaitDurableLocked(w.cur.end, false)
	if err == nil {
		err = w.err
	}
	w.mu.Unlock()
	w.stopBackground()
	if err == nil {
		w.lendBack()
	}
	return err
}

// lendBack gives the writer's buffers to Options.Buffers, once the writer
// is closed or sealed with every write done (after a failure they may be
// in a write that failed: they are left to the collector). The writer
// never touches them again: it takes no more appends.
func (w *Writer) lendBack() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, b := range []*wbuf{w.cur, w.spare} {
		if b != nil && len(b.b) == int(w.maxWrite) {
			w.opts.Buffers.put(b.b)
			b.b = nil
		}
	}
}

// stopBackground waits for the background flusher (which exits once closing
// is set and nothing is left to do) and stops the ticker.
func (w *Writer) stopBackground() {
	if w.background != nil {
		<-w.background
	}
	if w.tickerStop != nil {
		close(w.tickerStop)
	}
}
