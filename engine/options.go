package engine

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/wal"
)

// SyncMode says when appended records are durable; see wal.SyncMode.
type SyncMode = wal.SyncMode

const (
	SyncAlways   = wal.SyncAlways
	SyncInterval = wal.SyncInterval
	SyncNever    = wal.SyncNever
)

// Options configure a Log. The zero value Options{} is the defaults: a
// field left zero takes the default its comment names, and Open uses
// every field a caller sets as given or refuses it with an *OptionError
// (DefaultOptions spells the same defaults out).
type Options struct {
	// SegmentSize is the size a segment file is made for, in bytes
	// (preallocated to it unless NoPreallocate). The active segment is sealed, and a new one
	// started, after the append that brings the position of its last
	// index entry (one every IndexInterval of file) within MaxWrite of
	// SegmentSize, so that the next batch, up to MaxWrite, might not fit;
	// sealing writes the footer and cuts what is left of the file. A
	// sealed file therefore holds at least SegmentSize less MaxWrite, and
	// may pass SegmentSize by up to an IndexInterval and a MaxWrite (the
	// batch that filled it), plus its footer: with the default MaxWrite
	// (4 MiB, or SegmentSize/4), 64 MiB segments are sealed at 60 MiB or
	// more and 16 MiB ones at 12 MiB or more; with batches much smaller
	// than MaxWrite, not much more. Default 64 MiB; at least 64 KiB, at
	// most 16 GiB, and at least 2 MaxWrites.
	SegmentSize int64
	// SegmentAge: the active segment is also sealed once it is this old and
	// holds records (checked on append). Default 0: no age limit.
	SegmentAge time.Duration
	// SyncMode: default SyncAlways (Append returns after fdatasync).
	SyncMode SyncMode
	// SyncInterval for SyncInterval mode. Default 10ms; at least 1ms
	// (MinSyncInterval).
	SyncInterval time.Duration
	// CacheBytes is the budget of the log's own block cache, in bytes, when
	// Cache is nil. Default 64 MiB; at least 64 KiB, at most 256 GiB
	// (cache.MaxBytes).
	CacheBytes int64
	// Cache, if set, is shared with other logs (one budget for all); the
	// Log does not close it.
	Cache *cache.Cache
	// RetentionBytes: after each roll, the oldest sealed segments are
	// deleted while the log's files hold more than this many bytes.
	// Default 0: no limit.
	RetentionBytes int64
	// RetentionAge: after each roll, sealed segments whose last record is
	// older than this are deleted. Default 0: no limit.
	RetentionAge time.Duration
	// MaxOpenSegments is how many sealed segment files the log keeps open
	// for reads, each with its sparse index in memory (24 bytes per
	// IndexInterval of file, as its footer says), in files. Past it, the
	// least recently used one that nobody is reading is closed and its
	// index dropped; its next read opens it again (an open and two small
	// reads of its footer, even when the record is in the cache, which is
	// found through the index: raise the bound when point reads range over
	// more segments than it). Files in use by an iterator positioned in them, a
	// SegmentView or a Mapping stay open until let go, beyond the bound if
	// need be. The active segment is not counted. Default 64.
	MaxOpenSegments int
	// IndexInterval is the spacing of the position index in bytes of
	// segment file: an entry marks the first record that starts at or
	// after each multiple of it, so a point read reads at most its record
	// plus about one interval from the device, whatever the size of the
	// batch the record came in (segments written by format versions
	// before 3 keep their frame-granular index, and a point read there
	// reads the whole interval and the frames in it). Each entry costs 32
	// bytes: in memory while the segment is active, in its footer once
	// sealed. At least 512 bytes, at most 16 MiB and SegmentSize, and wide
	// enough that a full segment's index fits in its footer, which is
	// written in one write (within MaxWrite less 4 KiB). Default 0: 4 KiB,
	// or the narrowest 4 KiB multiple that fits where SegmentSize and
	// MaxWrite need it.
	IndexInterval int
	// NoPreallocate creates each new segment file empty, to grow as it is
	// appended to. Default false: each is reserved to SegmentSize up front
	// and zeroed (after the first, only while appends average under 256
	// KiB), so that fdatasyncs overwrite written blocks instead of growing
	// the file (1.5 to 2 times cheaper per sync on ext4).
	NoPreallocate bool
	// ReadOnly opens without taking the directory lock and refuses every
	// change: for tools on a live or damaged store. Nothing is repaired.
	ReadOnly bool
	// VerifyOnOpen: open reads every sealed segment's footer and proves
	// the last segment's tail empty, trusting neither the manifest nor a
	// clean close; a read-write open then repairs what a crash explains
	// (torn tail, damaged footer, unsealed segment), as segtool repair
	// does. Default false.
	VerifyOnOpen bool
	// Buffered opens segment files with the buffered (page-cache) fallback
	// instead of O_DIRECT: the explicit choice for filesystems that refuse
	// or ignore O_DIRECT (tmpfs). Default false.
	Buffered bool
	// MaxWrite is the wal writer's buffer and largest write, in bytes; it
	// bounds one Append's batch (see wal.Options.MaxWrite) and is recorded
	// in each segment file as it is created. At least 16 KiB (and 4 device
	// blocks), at most 64 MiB. Default 0: 4 MiB, or SegmentSize/4 if that
	// is smaller.
	MaxWrite int
	// ExportDropCache: after a Section or SegmentView WriteTo, and again
	// when the view closes (pages still in socket buffers cannot be dropped
	// before they are sent), advise the kernel to drop the exported range
	// from the page cache (posix_fadvise DONTNEED). sendfile and mmap read through the page
	// cache; with this set, exports do not fill it with segments that
	// direct I/O keeps out of it, at the price of reading them from the
	// device again for the next export. Default false.
	ExportDropCache bool
	// Logger receives recovery reports and warnings. Default slog.Default().
	Logger *slog.Logger
	// Now is the clock (record timestamps, segment age). Default time.Now.
	Now func() time.Time
	// Dir, if set, replaces the directory named in Open (for the simulated
	// directory in tests); the name passed to Open is then only used in
	// messages. What a log does beyond its own files it asks of the Dir
	// through blockdev's optional interfaces, once, at Open: a writer
	// takes the lock of a blockdev.Locker; Refresh needs a
	// blockdev.Stater and a blockdev.PlainOpener, imports a PlainOpener;
	// the acknowledged end a writer publishes for readers (DURABLE) needs
	// a blockdev.Mapper, and KeepRefreshed wakes on a blockdev.Watcher's
	// events (it polls without). *blockdev.OSDir and *blockdev.SimDir
	// have them all.
	Dir blockdev.Dir
}

// MinSyncInterval is the shortest SyncInterval accepted: the writer's
// ticker wakes at every interval, appends or not, so a shorter one keeps a
// core busy for nothing.
const MinSyncInterval = time.Millisecond

// DefaultOptions returns the documented defaults, which Options{} also
// takes. MaxWrite and IndexInterval are left 0, to be derived from
// SegmentSize.
func DefaultOptions() Options {
	return Options{
		SegmentSize:     64 << 20,
		SyncMode:        SyncAlways,
		SyncInterval:    10 * time.Millisecond,
		CacheBytes:      64 << 20,
		MaxOpenSegments: 64,
	}
}

// MaxSegmentSize is the largest Options.SegmentSize, in bytes: it keeps
// every file position of a segment, written past SegmentSize by the
// appends in flight when it fills, well inside what the block cache's
// keys held (32 GiB).
const MaxSegmentSize = 16 << 30

// Bounds on other Options, checked by Open.
const (
	minSegmentSize = 64 << 10
	// segmentWrites: a segment holds at least this many MaxWrites, so
	// that it rolls at least half full, not at nearly every append (Append
	// rolls once the last index entry is within MaxWrite of SegmentSize).
	segmentWrites = 2
	// derivedWrites: a derived MaxWrite is at most SegmentSize over this.
	derivedWrites = 4
	// minMaxWrite: the wal writer needs 4 device blocks, 4 KiB here.
	minMaxWrite      = 16 << 10
	minIndexInterval = 512
	// defaultIndexInterval: a point read reads about its record and one
	// interval (see readRecordRun), and each interval of a segment costs
	// an index entry of 32 bytes (in memory for the active segment, in
	// the footer of a sealed one): 4 KiB bounds the first by the device's
	// block and the second to 0.8% of the log.
	defaultIndexInterval = 4 << 10
	// maxIndexInterval bounds the unit of a point read, and so the memory
	// each read in flight holds.
	maxIndexInterval = 16 << 20
	// footerBlock: the footer frame must fit in one write with a device
	// block to spare (wal.Writer.Seal); the block is taken as 4 KiB, the
	// direct I/O unit of the devices seen (on one with a larger block a
	// seal thins the index to fit, see encodeFooter).
	footerBlock = 4 << 10
)

// OptionError is an Options value that Open refuses: which field, its
// value, and what is wrong and what to change.
type OptionError struct {
	Option  string // the field, as in Options (SegmentSize)
	Value   string // its value as given
	Problem string // what is wrong with it, and what to change
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("engine: Options.%s %s %s", e.Option, e.Value, e.Problem)
}

// footerSpare: Append rolls a segment once its index is this close to
// what its footer holds (shouldRollLocked), leaving room for the appends in
// flight beside the one that decided to roll (each adds at most one
// entry); Open leaves the same room.
const footerSpare = 64

// footerEntries is how many index entries Open lets a full segment have
// with MaxWrite mw: what its footer (version 2, as every new segment's)
// holds, less footerSpare.
func footerEntries(mw int) int64 {
	batch := alignedbuf.AlignDown(int64(mw), footerBlock) - footerBlock - wal.FrameHeaderLen
	return int64(layout.FooterV2Fits(int(batch)) - footerSpare)
}

// segmentEntries bounds the index entries of a segment of size seg at
// interval iv, appended to by one caller at a time: the entries Append
// lets begin before the last is within MaxWrite of seg, spaced at least
// iv apart after the first at DataStart, and the one its last append may
// add. (Concurrent appends that all land before one of them rolls can add
// more; a seal then thins the index, see encodeFooter.)
func segmentEntries(seg int64, iv int) int64 {
	return (seg-wal.DataStart)/int64(iv) + 2
}

// resolve fills in the defaults of o and checks every field and every
// combination, so that what Open accepts works: an *OptionError for what
// cannot.
func (o Options) resolve() (Options, error) {
	refuse := func(option string, value any, problem string, args ...any) (Options, error) {
		v := fmt.Sprint(value)
		if n, ok := value.(int64); ok {
			v = sizeString(n)
		}
		return o, &OptionError{Option: option, Value: v, Problem: fmt.Sprintf(problem, args...)}
	}
	for _, f := range []struct {
		name  string
		value any // int64 (bytes) or time.Duration
		neg   bool
		zero  string
	}{
		{"SegmentSize", o.SegmentSize, o.SegmentSize < 0, "the default, 64 MiB"},
		{"SegmentAge", o.SegmentAge, o.SegmentAge < 0, "no age limit"},
		{"SyncInterval", o.SyncInterval, o.SyncInterval < 0, "the default, 10ms"},
		{"CacheBytes", o.CacheBytes, o.CacheBytes < 0, "the default, 64 MiB"},
		{"RetentionBytes", o.RetentionBytes, o.RetentionBytes < 0, "no limit"},
		{"RetentionAge", o.RetentionAge, o.RetentionAge < 0, "no limit"},
		{"IndexInterval", int64(o.IndexInterval), o.IndexInterval < 0, "a derived interval"},
		{"MaxWrite", int64(o.MaxWrite), o.MaxWrite < 0, "a derived size"},
		{"MaxOpenSegments", o.MaxOpenSegments, o.MaxOpenSegments < 0, "the default, 64"},
	} {
		if f.neg {
			return refuse(f.name, f.value, "is negative: use a positive value, or 0 for %s", f.zero)
		}
	}
	switch o.SyncMode {
	case SyncAlways, SyncInterval, SyncNever:
	default:
		return refuse("SyncMode", o.SyncMode, "is not a sync mode: use SyncAlways, SyncInterval or SyncNever")
	}
	d := DefaultOptions()
	if o.SegmentSize == 0 {
		o.SegmentSize = d.SegmentSize
	}
	if o.SyncInterval == 0 {
		o.SyncInterval = d.SyncInterval
	}
	if o.CacheBytes == 0 {
		o.CacheBytes = d.CacheBytes
	}
	if o.MaxOpenSegments == 0 {
		o.MaxOpenSegments = d.MaxOpenSegments
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	switch {
	case o.SegmentSize < minSegmentSize:
		return refuse("SegmentSize", o.SegmentSize, "is too small: use at least %s", sizeString(minSegmentSize))
	case o.SegmentSize > MaxSegmentSize:
		return refuse("SegmentSize", o.SegmentSize, "is too large: use at most %s", sizeString(MaxSegmentSize))
	case o.Cache == nil && o.CacheBytes < 64<<10:
		return refuse("CacheBytes", o.CacheBytes, "is too small for a cache: use at least 64 KiB")
	case o.Cache == nil && o.CacheBytes > cache.MaxBytes:
		return refuse("CacheBytes", o.CacheBytes, "is too large for a cache: use at most %s (its counters are sized from the budget up front)", sizeString(cache.MaxBytes))
	case o.SyncInterval < MinSyncInterval:
		return refuse("SyncInterval", o.SyncInterval, "is too short: use at least %v (a shorter ticker wakes that often even while the log is idle)", MinSyncInterval)
	}
	if o.MaxWrite == 0 {
		o.MaxWrite = int(min(wal.DefaultMaxWrite, alignedbuf.AlignDown(o.SegmentSize/derivedWrites, footerBlock)))
	}
	switch mw := int64(o.MaxWrite); {
	case mw < minMaxWrite:
		return refuse("MaxWrite", mw, "is too small: use at least %s", sizeString(minMaxWrite))
	case mw > wal.MaxFramePayload:
		return refuse("MaxWrite", mw, "is too large: use at most %s", sizeString(wal.MaxFramePayload))
	case o.SegmentSize < segmentWrites*mw:
		return refuse("MaxWrite", mw, "is too large for SegmentSize %s: a segment must hold at least %d writes, or nearly every append rolls one; lower MaxWrite to at most %s (or leave it 0 to derive it), or raise SegmentSize to at least %s",
			sizeString(o.SegmentSize), segmentWrites, sizeString(alignedbuf.AlignDown(o.SegmentSize/segmentWrites, footerBlock)), sizeString(segmentWrites*mw))
	}
	// The narrowest interval whose full segment's index fits the footer.
	need := (o.SegmentSize - wal.DataStart) / (footerEntries(o.MaxWrite) - 2)
	fits := alignedbuf.AlignUp(need+1, 4<<10)
	if o.IndexInterval == 0 {
		o.IndexInterval = int(max(defaultIndexInterval, fits))
		if o.IndexInterval > maxIndexInterval {
			return refuse("MaxWrite", int64(o.MaxWrite), "is too small for SegmentSize %s: a full segment's index would not fit in its footer, written in one write, at any IndexInterval up to %s; raise MaxWrite, or lower SegmentSize",
				sizeString(o.SegmentSize), sizeString(maxIndexInterval))
		}
	}
	switch iv := int64(o.IndexInterval); {
	case iv < minIndexInterval:
		return refuse("IndexInterval", iv, "is too small: use at least %d bytes", minIndexInterval)
	case iv > maxIndexInterval:
		return refuse("IndexInterval", iv, "is too large: use at most %s", sizeString(maxIndexInterval))
	case iv > o.SegmentSize:
		// A point read's buffer is sized by the interval, whatever the file.
		return refuse("IndexInterval", iv, "is larger than SegmentSize %s: use at most that", sizeString(o.SegmentSize))
	case segmentEntries(o.SegmentSize, o.IndexInterval) > footerEntries(o.MaxWrite):
		return refuse("IndexInterval", iv, "is too small for SegmentSize %s with MaxWrite %s: a full segment's index (%d entries of %d bytes) would not fit in its footer, written in one write (%d entries); raise IndexInterval to at least %s (or leave it 0 to derive it), or raise MaxWrite, or lower SegmentSize",
			sizeString(o.SegmentSize), sizeString(int64(o.MaxWrite)), segmentEntries(o.SegmentSize, o.IndexInterval), indexEntryLen, footerEntries(o.MaxWrite), sizeString(fits))
	}
	return o, nil
}

// sizeString writes n bytes in the largest binary unit that divides it.
func sizeString(n int64) string {
	for _, u := range []struct {
		name string
		size int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n != 0 && n%u.size == 0 {
			return fmt.Sprintf("%d %s", n/u.size, u.name)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}
