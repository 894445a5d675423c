package engine

import (
	"slices"
	"time"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/wal"
)

func (l *Log) addSealedStats(st wal.Stats) {
	for {
		old := l.sealed.Load()
		sum := addStats(*old, st)
		if l.sealed.CompareAndSwap(old, &sum) {
			return
		}
	}
}

// addStats returns the sum of two writers' counters.
func addStats(a, b wal.Stats) wal.Stats {
	a.Appends += b.Appends
	a.Records += b.Records
	a.FrameBytes += b.FrameBytes
	a.Writes += b.Writes
	a.WriteBytes += b.WriteBytes
	a.Syncs += b.Syncs
	a.SyncTime += b.SyncTime
	return a
}

// SegmentInfo describes one segment.
type SegmentInfo struct {
	Base    uint64 // first offset
	Next    uint64 // offset after the last durable record
	Bytes   int64  // file size; for a sealed file, where its footer ends (what a view exports)
	DataEnd int64  // file position where the durable records end (a sealed file's footer starts there)
	Sealed  bool
	File    string
	// FirstTime is when the first record was appended, SealedAt when the
	// segment was sealed (zero while active).
	FirstTime, SealedAt time.Time
	// IndexEntries is the size of the sparse index; -1 for a sealed segment
	// whose file has not been read since open (trusted through the manifest).
	IndexEntries int
	// FooterCRC is the CRC-32C of a sealed segment's footer bytes (which
	// hold its range, sizes and index): with Bytes, it identifies the
	// file's contents (frames carry their own checksums). 0 while active.
	FooterCRC uint32
	// SegmentID is the random identity in the file's header, new for every
	// file the engine writes (a segment rewritten by TruncateBack gets a new
	// one, an imported file keeps its source's, byte for byte): two files
	// with the same footer but other records differ in it. Set in a
	// SegmentView's Info, which holds the file; 0 from Segments, which
	// reads no file.
	SegmentID uint64
}

// ExportSize is how many bytes of the file a SegmentView exports: a
// sealed file whole, the active one up to its durable end.
func (si SegmentInfo) ExportSize() int64 {
	if si.Sealed {
		return si.Bytes
	}
	return si.DataEnd
}

// StorageInfo describes how the log's files are accessed.
type StorageInfo struct {
	Direct     bool   // O_DIRECT (false: the buffered fallback)
	Filesystem string // e.g. "ext4"; "" if unknown
	Alignment  blockdev.Alignment
}

// Storage describes the files of the newest segment.
func (l *Log) Storage() StorageInfo {
	segs := *l.segs.Load()
	if len(segs) == 0 || !segs[len(segs)-1].acquire() {
		return StorageInfo{}
	}
	s := segs[len(segs)-1]
	defer s.done()
	if l.ensure(s) != nil {
		return StorageInfo{}
	}
	si := StorageInfo{Direct: s.dev.Direct(), Alignment: s.dev.Alignment()}
	if fs, ok := s.dev.(interface{ Filesystem() string }); ok {
		si.Filesystem = fs.Filesystem()
	}
	return si
}

// Segments lists the segments, oldest first.
func (l *Log) Segments() []SegmentInfo {
	segs := *l.segs.Load()
	out := make([]SegmentInfo, len(segs))
	for i, s := range segs {
		out[i] = s.info()
	}
	return out
}

// Stats are counters of the log's work since Open.
type Stats struct {
	Appends, Records int64 // batches and records appended
	Writes, Syncs    int64 // device writes and fdatasyncs
	MeanBatch        float64
	MeanSync         time.Duration
	Cache            cache.Stats
	Segments         int
	Bytes            int64 // segment files on disk
	StartOffset      uint64
	EndOffset        uint64
	DurableOffset    uint64
	// LastOpenRecovery is what Open found and did, as it was when Open
	// returned; it never changes after (each call returns a copy of it).
	LastOpenRecovery Recovery
	// RebuiltFootersSinceOpen: sealed segments trusted at Open without
	// reading their footer (through the manifest), or opened by Refresh,
	// whose footer was found damaged when their file was opened after
	// Open, in the order found, each once. They are served from an index
	// rebuilt from their records; a writer's next open rebuilds each
	// footer on disk and reports it in LastOpenRecovery.RebuiltFooters.
	RebuiltFootersSinceOpen []uint64
	// Exported bytes (SegmentView and Section WriteTo): sent by sendfile to
	// a socket, or copied (any other writer, e.g. TLS or a buffer).
	ExportSendfileBytes, ExportCopiedBytes int64
	// SyncLatency: fdatasync durations in seconds; FlushBatch: appends per
	// group-commit flush. Since Open.
	SyncLatency, FlushBatch Histogram
	// PointReads: Read calls that returned a record. ReadDeviceBytes: the
	// bytes they read from the device (whole aligned reads), so
	// ReadDeviceBytes/PointReads is a point read's amplification.
	// FreshHits: of them served from the batches appended last, with no
	// device read and no cache lookup; ReadAheadHits: served from chunks
	// read ahead of a run of sequential reads, whose device reads
	// (ReadAheadBytes) are in ReadDeviceBytes too.
	PointReads, ReadDeviceBytes, FreshHits int64
	ReadAheadHits, ReadAheadBytes          int64
}

// Stats returns the counters.
func (l *Log) Stats() Stats {
	// The sealed sum, the retired segment's and the active writer's
	// counters are read under one hold of l.mu: a roll's cut (which makes
	// the active segment the retired one) holds it exclusively, and its
	// seal moves the retired segment's counters into the sealed sum under
	// statsMu; so each move is wholly before or after, and the counters
	// never go back.
	l.mu.RLock()
	l.statsMu.Lock()
	w := *l.sealed.Load()
	if r := l.retiring; r != nil {
		w = addStats(w, r.w.Stats())
	}
	l.statsMu.Unlock()
	if l.active != nil && l.active.w != nil {
		w = addStats(w, l.active.w.Stats())
	}
	l.mu.RUnlock()
	l.reportMu.Lock()
	rebuilt := slices.Clone(l.rebuiltSince)
	l.reportMu.Unlock()
	st := Stats{RebuiltFootersSinceOpen: rebuilt, Appends: w.Appends, Records: w.Records, Writes: w.Writes, Syncs: w.Syncs,
		Cache: l.cache.Stats(), StartOffset: l.StartOffset(), EndOffset: l.EndOffset(),
		DurableOffset: l.DurableOffset(), LastOpenRecovery: l.report.clone(), // final since Open returned
		ExportSendfileBytes: l.exportSendfile.Load(), ExportCopiedBytes: l.exportCopied.Load(),
		SyncLatency: l.syncHist.snapshot(), FlushBatch: l.batchHist.snapshot(),
		PointReads: l.pointReads.Load(), ReadDeviceBytes: l.readDeviceBytes.Load(),
		ReadAheadHits: l.ra.hits.Load(), ReadAheadBytes: l.ra.bytes.Load()}
	if l.fresh != nil {
		st.FreshHits = l.fresh.hits.Load()
	}
	if w.Writes > 0 {
		st.MeanBatch = float64(w.Appends) / float64(w.Writes)
	}
	if w.Syncs > 0 {
		st.MeanSync = w.SyncTime / time.Duration(w.Syncs)
	}
	for _, si := range l.Segments() {
		st.Segments++
		st.Bytes += si.Bytes
	}
	return st
}
