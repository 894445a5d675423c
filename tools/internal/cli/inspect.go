package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/engine"
)

// InspectReport is what Inspect prints.
type InspectReport struct {
	Dir      string               `json:"dir"`
	Storage  engine.StorageInfo   `json:"storage"`
	Segments []engine.SegmentInfo `json:"segments"`
	Start    uint64               `json:"start"`
	End      uint64               `json:"end"`
	Records  uint64               `json:"records"`
	Bytes    int64                `json:"bytes"`
	Recovery engine.Recovery      `json:"last_open"`
	Writer   engine.WriterInfo    `json:"writer"` // the process writing the store, if any
	Warnings []string             `json:"warnings"`
	// Replication: set when the store is a follower (segtool replicate).
	Replication *ReplicationStatus `json:"replication,omitempty"`
}

// MarshalJSON writes the report in snake_case throughout, as every
// segtool document is, with [] for empty lists.
func (r InspectReport) MarshalJSON() ([]byte, error) {
	type alignment struct {
		Memory int    `json:"memory"`
		Offset int    `json:"offset"`
		Block  int    `json:"block"`
		Source string `json:"source"`
	}
	type storage struct {
		Direct     bool      `json:"direct"`
		Filesystem string    `json:"filesystem"`
		Alignment  alignment `json:"alignment"`
	}
	type segment struct {
		Base         uint64     `json:"base"`
		Next         uint64     `json:"next"`
		Records      uint64     `json:"records"`
		Bytes        int64      `json:"bytes"`
		DataEnd      int64      `json:"data_end"`
		Sealed       bool       `json:"sealed"`
		File         string     `json:"file"`
		FirstRecord  *time.Time `json:"first_record,omitempty"`
		SealedAt     *time.Time `json:"sealed_at,omitempty"`
		IndexEntries int        `json:"index_entries"`
		FooterCRC    string     `json:"footer_crc32c,omitempty"`
	}
	type torn struct {
		Position int64  `json:"position"`
		Bytes    int64  `json:"bytes"`
		Reason   string `json:"reason"`
	}
	type recovery struct {
		Segments          int      `json:"segments"`
		SealedByFooter    int      `json:"sealed_trusted_by_footer"`
		SealedByManifest  int      `json:"sealed_trusted_by_manifest"`
		Resealed          []uint64 `json:"resealed"`
		FinishedSeals     []uint64 `json:"finished_seals"`
		RebuiltFooters    []uint64 `json:"rebuilt_footers"`
		RemovedIncomplete []uint64 `json:"removed_incomplete"`
		ActiveFrames      int      `json:"active_frames"`
		ActiveRead        int64    `json:"active_bytes_read"`
		ActiveScanMicros  int64    `json:"active_scan_us"`
		TornTail          *torn    `json:"torn_tail,omitempty"`
		CleanEnd          bool     `json:"clean_end"`
		Microseconds      int64    `json:"duration_us"`
	}
	list := func(v []uint64) []uint64 { return append([]uint64{}, v...) }
	st, rec := r.Storage, r.Recovery
	doc := struct {
		Dir         string             `json:"dir"`
		Storage     storage            `json:"storage"`
		Segments    []segment          `json:"segments"`
		Start       uint64             `json:"start"`
		End         uint64             `json:"end"`
		Records     uint64             `json:"records"`
		Bytes       int64              `json:"bytes"`
		Recovery    recovery           `json:"last_open"`
		Writer      engine.WriterInfo  `json:"writer"`
		Warnings    []string           `json:"warnings"`
		Replication *ReplicationStatus `json:"replication,omitempty"`
	}{Dir: r.Dir, Storage: storage{st.Direct, st.Filesystem, alignment{st.Alignment.Memory, st.Alignment.Offset, st.Alignment.Block, st.Alignment.Source}},
		Segments: []segment{}, Start: r.Start, End: r.End, Records: r.Records, Bytes: r.Bytes,
		Recovery: recovery{Segments: rec.Segments, SealedByFooter: rec.Sealed, SealedByManifest: rec.Deferred, Resealed: list(rec.Resealed),
			FinishedSeals: list(rec.FinishedSeals), RebuiltFooters: list(rec.RebuiltFooters), RemovedIncomplete: list(rec.RemovedIncomplete),
			ActiveFrames: rec.ActiveFrames, ActiveRead: rec.ActiveRead, ActiveScanMicros: rec.ActiveScan.Microseconds(), CleanEnd: rec.CleanEnd, Microseconds: rec.Duration.Microseconds()},
		Writer: r.Writer, Warnings: append([]string{}, r.Warnings...), Replication: r.Replication}
	if t := rec.Torn; t != nil {
		doc.Recovery.TornTail = &torn{t.Pos, t.Bytes, t.Reason}
	}
	for _, s := range r.Segments {
		seg := segment{Base: s.Base, Next: s.Next, Records: s.Next - s.Base, Bytes: s.Bytes, DataEnd: s.DataEnd, Sealed: s.Sealed, File: s.File, IndexEntries: s.IndexEntries}
		if s.Next > s.Base {
			t := s.FirstTime.UTC()
			seg.FirstRecord = &t
		}
		if s.Sealed {
			t := s.SealedAt.UTC()
			seg.SealedAt, seg.FooterCRC = &t, fmt.Sprintf("%08x", s.FooterCRC)
		}
		doc.Segments = append(doc.Segments, seg)
	}
	return json.Marshal(doc)
}

// Inspect prints the segments of the store in dir, totals, what opening it
// found, and health warnings. It opens read-only and reads each sealed
// segment's footer (for its index).
func Inspect(out io.Writer, dir string, asJSON bool) error {
	l, err := openStore(dir, false)
	if err != nil {
		return err
	}
	defer l.Close()
	for _, s := range l.Segments() { // load lazily trusted footers, for the index sizes
		v, err := l.OpenSegment(s.Base)
		if err != nil {
			return err
		}
		v.Close()
	}
	r := InspectReport{Dir: dir, Storage: l.Storage(), Segments: l.Segments(), Start: l.StartOffset(), End: l.DurableOffset(),
		Writer: l.Writer(), Replication: readReplication(dir)}
	st := l.Stats()
	r.Recovery = st.LastOpenRecovery
	// The footers loaded above are part of what opening the store found.
	r.Recovery.RebuiltFooters = append(r.Recovery.RebuiltFooters, st.RebuiltFootersSinceOpen...)
	r.Records = r.End - r.Start
	for _, s := range r.Segments {
		r.Bytes += s.Bytes
	}
	if !r.Storage.Direct {
		r.Warnings = append(r.Warnings, "files are read through the page cache (buffered fallback), not O_DIRECT")
	}
	if r.Recovery.Torn != nil {
		r.Warnings = append(r.Warnings, fmt.Sprintf("the last segment has a torn tail at byte %d (%d bytes): a read-write open cuts it", r.Recovery.Torn.Pos, r.Recovery.Torn.Bytes))
	}
	if len(r.Recovery.RebuiltFooters) > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("damaged footers in segments %v: a read-write open rebuilds them", r.Recovery.RebuiltFooters))
	}
	if asJSON {
		return writeReport(out, r)
	}
	fmt.Fprintf(out, "store %s: %s, offsets [%d, %d) (%s), %d bytes\n", dir, plural(len(r.Segments), "segment"), r.Start, r.End, plural(int(r.Records), "record"), r.Bytes)
	fmt.Fprintf(out, "storage: direct=%v filesystem=%s alignment: %d-byte offsets, %d-byte memory, %d-byte blocks (from %s)\n",
		r.Storage.Direct, r.Storage.Filesystem, r.Storage.Alignment.Offset, r.Storage.Alignment.Memory, r.Storage.Alignment.Block, r.Storage.Alignment.Source)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "base\tlast\trecords\tbytes\tsealed\tfirst record\tsealed at\tindex entries\tfile\t")
	for _, s := range r.Segments {
		last, sealedAt, first := "-", "-", "-"
		if s.Next > s.Base {
			last, first = fmt.Sprint(s.Next-1), s.FirstTime.UTC().Format(timeFormat)
		}
		if s.Sealed {
			sealedAt = s.SealedAt.UTC().Format(timeFormat)
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%v\t%s\t%s\t%d\t%s\t\n", s.Base, last, s.Next-s.Base, s.Bytes, s.Sealed, first, sealedAt, s.IndexEntries, s.File)
	}
	tw.Flush()
	rec := r.Recovery
	fmt.Fprintf(out, "open: %d sealed segments trusted (%d through their footers, %d through the manifest), last segment scanned: %d frames\n",
		rec.Sealed+rec.Deferred, rec.Sealed, rec.Deferred, rec.ActiveFrames)
	if !rec.CleanIndex && rec.Segments > 0 {
		fmt.Fprintf(out, "recovery: the last segment's scan read %d bytes in %s (it stops at the segment's high-water mark)\n", rec.ActiveRead, rec.ActiveScan.Round(time.Microsecond))
	}
	switch w := r.Writer; {
	case w.Published:
		fmt.Fprintf(out, "writer: another process, appends acknowledged below offset %d (shown here: up to there)\n", w.Acknowledged)
	case w.Live:
		fmt.Fprintln(out, "writer: another process (it publishes no acknowledged end: what is on disk is shown)")
	default:
		fmt.Fprintln(out, "writer: none")
	}
	if rp := r.Replication; rp != nil {
		fmt.Fprintln(out, rp)
	}
	for _, w := range r.Warnings {
		fmt.Fprintln(out, "warning:", w)
	}
	return nil
}

func newInspectCommand() *cobra.Command {
	return dirReportCommand("inspect DIR", "Show segments, totals, what opening found, and health warnings (read-only)", Inspect)
}
