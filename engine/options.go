package engine

import (
	"log/slog"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

// SyncMode says when appended records are durable; see wal.SyncMode.
type SyncMode = wal.SyncMode

const (
	SyncAlways   = wal.SyncAlways
	SyncInterval = wal.SyncInterval
	SyncNever    = wal.SyncNever
)

// Options configure a Log. Start from DefaultOptions.
type Options struct {
	// SegmentSize: the active segment is sealed and a new one started once
	// its file reaches this many bytes. Default 64 MiB; at least 64 KiB.
	SegmentSize int64
	// SegmentAge: the active segment is also sealed once it is this old and
	// holds records (checked on append). Default 0: no age limit.
	SegmentAge time.Duration
	// SyncMode: default SyncAlways (Append returns after fdatasync).
	SyncMode SyncMode
	// SyncInterval for SyncInterval mode. Default 10ms.
	SyncInterval time.Duration
	// CacheBytes is the budget of the log's own block cache, in bytes, when
	// Cache is nil. Default 64 MiB.
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
	// index dropped; its next read opens it again (two small reads of its
	// footer). Files in use by an iterator positioned in them, a
	// SegmentView or a Mapping stay open until let go, beyond the bound if
	// need be. The active segment is not counted. Default 64.
	MaxOpenSegments int
	// IndexInterval is the spacing of the sparse index in bytes of segment
	// file; it is also the unit read from disk and cached for point reads.
	// Default 64 KiB.
	IndexInterval int
	// Preallocate reserves and zeroes each new segment file to SegmentSize
	// up front (fdatasyncs then overwrite blocks instead of growing the
	// file). Default true in DefaultOptions.
	Preallocate bool
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
	// MaxWrite is the wal writer's buffer and largest write; it bounds one
	// Append's batch (see wal.Options.MaxWrite). Default 4 MiB.
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
	// messages.
	Dir blockdev.Dir
}

// DefaultOptions returns the documented defaults.
func DefaultOptions() Options {
	return Options{
		SegmentSize:     64 << 20,
		SyncMode:        SyncAlways,
		SyncInterval:    10 * time.Millisecond,
		CacheBytes:      64 << 20,
		IndexInterval:   64 << 10,
		MaxOpenSegments: 64,
		Preallocate:     true,
		MaxWrite:        wal.DefaultMaxWrite,
	}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	if o.SegmentSize <= 0 {
		o.SegmentSize = d.SegmentSize
	}
	if o.SyncInterval <= 0 {
		o.SyncInterval = d.SyncInterval
	}
	if o.CacheBytes <= 0 {
		o.CacheBytes = d.CacheBytes
	}
	if o.IndexInterval <= 0 {
		o.IndexInterval = d.IndexInterval
	}
	if o.MaxOpenSegments <= 0 {
		o.MaxOpenSegments = d.MaxOpenSegments
	}
	if o.MaxWrite <= 0 {
		o.MaxWrite = d.MaxWrite
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}
