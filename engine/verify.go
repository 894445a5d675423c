package engine

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// Problem kinds reported by Verify.
const (
	ProblemTornTail = "torn-tail" // a crash's unfinished write at the end of a segment: open cuts it (and seals a segment that is not the last)
	ProblemFooter   = "footer"    // a damaged or wrong footer over sound records: open rebuilds it
	ProblemUnsealed = "unsealed"  // a segment before the last without a footer (a crash before its seal): open seals it
	// ProblemUnfinishedSeal: a sound footer followed by zeros (a crash
	// between the seal's footer fdatasync and its truncate): open cuts the
	// zeros. Until then the file does not end at its footer, which is
	// where exports and importers look for it.
	ProblemUnfinishedSeal = "unfinished-seal"
	ProblemCorruption     = "corruption" // damaged records: not repairable without losing data
	// ProblemManifest: MANIFEST is damaged. It is only a shortcut to the
	// sealed segments' footers: opens read every footer instead, and a
	// read-write open followed by a close writes it anew.
	ProblemManifest = "manifest"
	ProblemMissing  = "missing" // records missing between two segments (a gap)
	// ProblemVersion: a segment written by a newer format version than
	// this build reads; it is not damage, and a newer build checks it.
	ProblemVersion = "version"
)

// Problem is one piece of damage Verify found.
type Problem struct {
	Segment    uint64 `json:"segment"`
	File       string `json:"file"`
	Position   int64  `json:"position"`
	Kind       string `json:"kind"`
	Repairable bool   `json:"repairable"` // by opening the log read-write (or segtool repair)
	Detail     string `json:"detail"`
}

func (p Problem) String() string {
	fix := "not repairable without losing records"
	switch {
	case p.Repairable:
		fix = "repairable"
	case p.Kind == ProblemVersion:
		fix = "not damage: check it with a newer segstore"
	}
	return fmt.Sprintf("segment %d (%s) at byte %d: %s: %s (%s)", p.Segment, p.File, p.Position, p.Kind, p.Detail, fix)
}

// VerifyReport is what Verify read and found.
type VerifyReport struct {
	Segments int       `json:"segments"`
	Sealed   int       `json:"sealed"`
	Frames   int64     `json:"frames"`
	Records  uint64    `json:"records"`
	Bytes    int64     `json:"bytes"` // file bytes read
	Start    uint64    `json:"start"` // first offset of the first segment
	End      uint64    `json:"end"`   // offset after the last valid record
	Problems []Problem `json:"problems"`
	// LiveWriter: a writer held the store's lock during the check; damaged
	// bytes after the last segment's records were then taken for an
	// append in flight (TailInFlight), not reported as a torn tail.
	LiveWriter   bool `json:"live_writer"`
	TailInFlight bool `json:"tail_in_flight"`

	endUnknown bool // the last segment read stopped at damage: skip the contiguity check
}

// Clean reports whether no problem was found.
func (r *VerifyReport) Clean() bool { return len(r.Problems) == 0 }

// VerifyOptions configure Verify.
type VerifyOptions struct {
	Buffered bool // read with the buffered fallback instead of O_DIRECT
	// Progress, if set, is called after each segment with the bytes read
	// so far and the total.
	Progress func(done, total int64)
}

// Verify reads every frame and footer of the store in dir without
// changing anything (and without the directory lock, so it works beside
// a live writer): every frame's checksum and offsets, every footer against
// the frames (range, sizes, each index entry), the contiguity of the
// segments. Damage is reported as Problems, saying whether opening the log
// would repair it; the error is for what stops the check itself.
//
// Beside a live writer, a check that found problems lists the directory
// again; if the writer changed it meanwhile (a TruncateBack removes the
// segments after the one it cuts into, then renames its rewrite over that
// one, which the check may have read as an unsealed segment in the middle
// of the log), the check starts over, up to verifyTries times, so what is
// reported comes from a listing that stood still across the check.
func Verify(dir string, opts VerifyOptions) (*VerifyReport, error) {
	d, err := blockdev.OpenExistingDir(dir, opts.Buffered)
	if err != nil {
		return nil, err
	}
	for try := 1; ; try++ {
		names, err := d.List()
		if err != nil {
			return nil, err
		}
		if verifyHook != nil {
			verifyHook("listed")
		}
		r, err := verifyListed(d, names, opts)
		if err != nil || r.Clean() || !r.LiveWriter || try == verifyTries {
			return r, err
		}
		if again, err := d.List(); err != nil || slices.Equal(names, again) {
			return r, nil
		}
	}
}

// verifyTries bounds the checks of a Verify whose directory a live writer
// keeps changing while each finds problems.
const verifyTries = 8

// verifyHook, set by tests only (and only while no other test verifies a
// store), runs after each check's listing ("listed") and after it read
// the writer's words for the last segment, whose file it has opened
// ("words").
var verifyHook func(step string)

// verifyListed is Verify of the files a listing of d named. A writer's
// retention (or TruncateFront) may remove the oldest of them before they
// are read: a segment that is gone when Verify comes to it, and that lies
// below the first segment still in the directory, was dropped from the
// front of the log, not lost; it is skipped, and the report starts again
// at the next segment (the ones read before it were dropped too). Any
// other segment that is gone is skipped as well, and the next one's start
// reports the gap it leaves (ProblemMissing).
func verifyListed(d blockdev.Dir, names []string, opts VerifyOptions) (*VerifyReport, error) {
	bases := segmentBases(names)
	var total int64
	for _, b := range bases {
		size, err := d.Size(segName(b))
		if err != nil && !isNotExist(err) { // gone: decided when it is read
			return nil, err
		}
		total += size
	}
	caps := capsOf(d)
	r := &VerifyReport{LiveWriter: writerLive(caps)}
	var published *durableFile // a live writer's acknowledged end
	if r.LiveWriter {
		if published = openDurable(caps); published != nil {
			defer published.close(false)
		}
	}
	r.verifyMetadata(d)
	for i, base := range bases {
		last := i == len(bases)-1
		// How far the writer has acknowledged the last segment, read after
		// its file was opened and before the scan, so the scan must find
		// all of it; -1 for unknown. The words describe the file opened
		// only if its name still is that file once they are read: the
		// writer's TruncateBack renames a shorter rewrite over it.
		acked := func(dev blockdev.Device) int64 {
			if !last || published == nil {
				return -1
			}
			st, ok := published.read()
			if verifyHook != nil {
				verifyHook("words")
			}
			end, bounded := st.limit(base)
			if !ok || !bounded { // unknown, as without DURABLE; or not the writer's active segment
				return -1
			}
			if !namedFile(caps, segName(base), dev) {
				return -1
			}
			return end.pos
		}
		// A live writer seals the segment before its last after the last
		// one takes appends: it may be writing that footer now.
		sealing := r.LiveWriter && i == len(bases)-2
		err := r.verifySegment(d, base, last, sealing, acked)
		if isNotExist(err) {
			front, lerr := droppedFromFront(d, base)
			if lerr != nil {
				return r, fmt.Errorf("engine: verify: %s is gone, and listing the directory again to see whether retention removed it failed: %w", segName(base), lerr)
			}
			if front {
				// Start again at the next segment.
				r.Segments, r.Sealed, r.Start, r.End, r.endUnknown = 0, 0, 0, 0, false
			}
			continue
		}
		if err != nil {
			return r, err
		}
		if opts.Progress != nil {
			opts.Progress(r.Bytes, total)
		}
	}
	return r, nil
}

// droppedFromFront reports whether segment base, which is gone, lies below
// every segment still in d: removed from the front of the log by a live
// writer's retention or TruncateFront.
func droppedFromFront(d blockdev.Dir, base uint64) (bool, error) {
	names, err := d.List()
	if err != nil {
		return false, err
	}
	bases := segmentBases(names)
	return len(bases) > 0 && bases[0] >= base, nil
}

// verifyMetadata checks the store's metadata files: START (where the log
// starts after a TruncateFront) and MANIFEST. A damaged START stops every
// open: it is corruption (removing the file would bring back the records
// TruncateFront dropped, so it is not done for the user). A damaged
// MANIFEST costs opens time only, and a read-write open and close rewrites
// it.
func (r *VerifyReport) verifyMetadata(d blockdev.Dir) {
	if _, err := readMeta(d, startName, metaStart); err != nil && !isNotExist(err) {
		r.Problems = append(r.Problems, Problem{File: filepath.Join(d.Path(), startName), Kind: ProblemCorruption,
			Detail: fmt.Sprintf("%v: it holds the log's first offset; restore it from a copy, or remove it to make the records that TruncateFront dropped readable again", err)})
	}
	b, err := readMeta(d, manifestName, metaManifest)
	if err == nil {
		_, _, err = decodeManifest(b)
	}
	if err != nil && !isNotExist(err) {
		r.Problems = append(r.Problems, Problem{File: filepath.Join(d.Path(), manifestName), Kind: ProblemManifest, Repairable: true,
			Detail: fmt.Sprintf("%v: opens read every segment's footer instead; opening the log read-write and closing it writes it anew", err)})
	}
}

// namedFile reports whether name in a directory of caps c is still the
// file dev has open (true where nothing tells files apart).
func namedFile(c dirCaps, name string, dev blockdev.Device) bool {
	if c.stat == nil {
		return true
	}
	named, err := c.stat.Stat(name)
	if err != nil {
		return false
	}
	open, err := c.stat.StatDevice(dev)
	return err == nil && named.SameFile(open)
}

// verifySegment checks one segment file. ackedOf, given the file once it
// is opened, says how far a live writer has acknowledged it, or -1;
// sealing says a live writer may be sealing this one (its seal, torn or
// unfinished, is then a write in flight, not a problem).
func (r *VerifyReport) verifySegment(d blockdev.Dir, base uint64, last, sealing bool, ackedOf func(blockdev.Device) int64) error {
	name := segName(base)
	path := filepath.Join(d.Path(), name)
	problem := func(pos int64, kind string, repairable bool, format string, args ...any) {
		r.Problems = append(r.Problems, Problem{Segment: base, File: path, Position: pos, Kind: kind, Repairable: repairable,
			Detail: fmt.Sprintf(format, args...)})
	}
	dev, err := d.Open(name, blockdev.Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer dev.Close()
	acked := ackedOf(dev)
	size, err := dev.Size()
	if err != nil {
		return err
	}
	r.Segments++
	r.Bytes += size
	if r.Segments == 1 {
		r.Start, r.End = base, base
	}
	if base != r.End && !r.endUnknown {
		problem(0, ProblemMissing, false, "the segment starts at offset %d, the one before ends at %d", base, r.End)
	}
	r.endUnknown = true // until this segment is read to its end
	sc, err := wal.NewScanner(dev)
	if errors.Is(err, wal.ErrVersion) {
		problem(0, ProblemVersion, false, "%v", err)
		return nil
	}
	if err != nil {
		problem(0, ProblemCorruption, false, "%v", err)
		return nil
	}
	sc.ReadAll() // stray data past the high-water mark is damage too
	if h := sc.Header(); h.BaseOffset != base {
		problem(0, ProblemCorruption, false, "the file header says base offset %d, the name says %d", h.BaseOffset, base)
	}
	// The footer's index is checked against the frames as the scan finds
	// them (one pass); a footer that does not read is judged by the scan.
	var check *entryCheck
	indexBad := -1
	if _, foot, err := wal.ReadSealed(dev); err == nil {
		if index, _, err := footerIndex(sc.Header(), base, foot); err == nil {
			check = &entryCheck{index: index, hdr: sc.Header()}
		}
	}
	for sc.Next() {
		f := sc.Frame()
		if check != nil && indexBad < 0 {
			indexBad = check.frame(f)
		}
		r.Frames++
		r.Records += uint64(f.Count)
	}
	r.End = sc.NextOffset()
	var ce *wal.CorruptionError
	switch err := sc.Err(); {
	case errors.As(err, &ce) && ce.InFooter:
		problem(ce.Position, ProblemFooter, true, "%v", err)
		r.endUnknown = false // the records are whole
		return nil
	case errors.As(err, &ce):
		problem(ce.Position, ProblemCorruption, false, "%v", err)
		return nil
	case err != nil:
		return err
	}
	r.endUnknown = false
	foot := r.verifyEnd(problem, sc, last, sealing, acked, size)
	if foot == nil {
		return nil
	}
	return verifyFooterIndex(problem, dev, sc.Header(), base, foot, check, indexBad)
}

// problemFunc records a problem of one segment file.
type problemFunc func(pos int64, kind string, repairable bool, format string, args ...any)

// verifyEnd judges how a scanned segment ends: a torn tail (corruption
// before what a live writer acknowledged, a write in flight, or
// repairable, in any segment: an open cuts it), frames that end before
// the acknowledged end, a missing footer, and an unfinished seal. It
// returns the footer to check further (nil: none).
func (r *VerifyReport) verifyEnd(problem problemFunc, sc *wal.Scanner, last, sealing bool, acked, size int64) *wal.Footer {
	if t := sc.Torn(); t != nil {
		switch {
		case last && r.LiveWriter && t.Pos < acked:
			problem(t.Pos, ProblemCorruption, false, "damaged bytes before byte %d, which the writer has acknowledged as durable: %s", acked, t.Reason)
		case (last && r.LiveWriter) || sealing:
			r.TailInFlight = true
		case last:
			problem(t.Pos, ProblemTornTail, true, "%d bytes of an unfinished write: %s", t.Bytes, t.Reason)
		default:
			// A roll makes the next file before it seals this one, so a
			// crash in between leaves this tear; an open cuts it and
			// seals the segment, as it does for a last segment's.
			problem(t.Pos, ProblemTornTail, true, "%d bytes of an unfinished write (a seal or the segment's last append, stopped while the log rolled): %s", t.Bytes, t.Reason)
		}
	}
	foot := sc.Footer()
	if foot == nil && sc.Torn() == nil && sc.End() < acked {
		problem(sc.End(), ProblemCorruption, false, "the frames end at byte %d, but the writer has acknowledged records up to byte %d", sc.End(), acked)
	}
	if foot == nil {
		switch {
		case sealing && sc.Torn() == nil:
			r.TailInFlight = true // the writer has not written the footer yet
		case !last && !sealing && sc.Torn() == nil:
			problem(sc.End(), ProblemUnsealed, true, "no footer: the log was stopped between the segment's last append and its seal")
		}
		return nil
	}
	r.Sealed++
	if foot.End < size {
		if (last && r.LiveWriter) || sealing {
			r.TailInFlight = true // the writer is between the footer's fdatasync and the truncate
		} else {
			problem(foot.End, ProblemUnfinishedSeal, true, "the footer ends at byte %d, followed by %d zero bytes: the seal's final truncate did not happen", foot.End, size-foot.End)
		}
	}
	return foot
}

// verifyFooterIndex checks that the footer of the file whose header is hdr
// and whose first offset is base decodes, and that every index entry is a
// record (a frame, before version 3) the scan found, with its offset and
// time. check is the index as the scan checked it, frame
// by frame, and indexBad the first entry that did not match (-1: none); a
// nil check (the file does not end at its footer) reads the frames again.
func verifyFooterIndex(problem problemFunc, dev blockdev.Device, hdr wal.FileHeader, base uint64, foot *wal.Footer, check *entryCheck, indexBad int) error {
	index, _, err := footerIndex(hdr, base, foot)
	if err != nil {
		problem(foot.Pos, ProblemFooter, true, "%v", err)
		return nil
	}
	// Every index entry must be a record (a frame, before version 3) the
	// scan found, with its offset and time.
	if check == nil {
		// The file does not end at its footer (an unfinished seal): the
		// footer came from the scan, so the frames are read again.
		check = &entryCheck{index: index, hdr: hdr}
		sc2, err := wal.NewScanner(dev)
		if err != nil {
			return err
		}
		for indexBad < 0 && sc2.Next() {
			indexBad = check.frame(sc2.Frame())
		}
	}
	if indexBad < 0 {
		indexBad = check.rest()
	}
	if indexBad >= 0 {
		e := check.index[indexBad]
		problem(foot.Pos, ProblemFooter, true, "index entry %d (offset %d at byte %d) does not match a record", indexBad, e.off, e.pos)
	}
	return nil
}
