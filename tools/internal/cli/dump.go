package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// DumpOptions configure Dump.
type DumpOptions struct {
	From    int64 // first offset whose frame to show; -1 for all
	Frames  int   // frames to show; 0 for all
	Records bool  // show each frame's records too (text: cut at 64 bytes; JSON: whole)
	JSON    bool  // one JSON object per segment, frame and footer line
}

// Dump shows the structure of the store in dir: each segment file's
// header, each frame (position, size, checksum, offsets, time: the batch
// boundaries) and the footer. It reads the files directly (no lock), and
// stops at the first damage, which it reports.
func Dump(out io.Writer, dir string, opts DumpOptions) error {
	if err := isStore(dir); err != nil {
		return err
	}
	names, bases, err := segmentFiles(dir)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(out)
	defer w.Flush()
	enc := json.NewEncoder(w)
	shown := 0
	if opts.From >= 0 && uint64(opts.From) < bases[0] {
		return inLog(uint64(opts.From), bases[0], bases[0])
	}
	var end uint64 // after the last frame read
	for i, name := range names {
		if opts.From >= 0 && i+1 < len(names) && bases[i+1] <= uint64(opts.From) {
			continue // wholly below --from
		}
		more, err := dumpSegment(w, enc, name, opts, &shown, &end)
		if err != nil || !more {
			return err
		}
	}
	if opts.From >= 0 && uint64(opts.From) > end {
		w.Reset(out) // beyond the log: say so alone, as cat does
		return usageError{fmt.Errorf("offset %d is outside the log's records [%d, %d): give --from in that range", opts.From, bases[0], end)}
	}
	return nil
}

// dumpSegment shows the segment file name; end is set to the offset after
// its last frame.
func dumpSegment(w *bufio.Writer, enc *json.Encoder, name string, opts DumpOptions, shown *int, end *uint64) (more bool, err error) {
	dev, err := blockdev.Open(name, blockdev.Options{ReadOnly: true})
	if errors.Is(err, blockdev.ErrDirectIOUnsupported) {
		dev, err = blockdev.Open(name, blockdev.Options{ReadOnly: true, Buffered: true})
	}
	if err != nil {
		return false, err
	}
	defer dev.Close()
	size, _ := dev.Size()
	sc, err := wal.NewScanner(dev)
	if err != nil {
		return false, err
	}
	h := sc.Header()
	if opts.JSON {
		enc.Encode(map[string]any{"segment": filepath.Base(name), "format": h.Version, "base": h.BaseOffset, "segment_id": fmt.Sprintf("%016x", h.SegmentID),
			"created": time.Unix(0, h.Created).UTC(), "max_write": h.MaxWrite, "bytes": size})
	} else {
		fmt.Fprintf(w, "segment %s: format %d, base %d, id %016x, created %s, max write %d, %d bytes\n",
			filepath.Base(name), h.Version, h.BaseOffset, h.SegmentID, time.Unix(0, h.Created).UTC().Format(timeFormat), h.MaxWrite, size)
	}
	*end = max(*end, h.BaseOffset)
	for sc.Next() {
		f := sc.Frame()
		*end = f.First + uint64(f.Count)
		if opts.From >= 0 && f.First+uint64(f.Count) <= uint64(opts.From) {
			continue
		}
		if opts.Frames > 0 && *shown >= opts.Frames {
			return false, nil
		}
		*shown++
		if opts.JSON {
			frame := map[string]any{"frame": f.Pos, "size": f.Size, "checksum": fmt.Sprintf("%08x", f.Checksum),
				"first": f.First, "count": f.Count, "time": time.Unix(0, f.Time).UTC()}
			if opts.Records {
				recs := []any{}
				wal.Records(h.Version, f.Payload, func(i int, rec []byte) bool {
					recs = append(recs, recordJSON(f.First+uint64(i), time.Unix(0, f.Time), rec))
					return true
				})
				frame["records"] = recs
			}
			enc.Encode(frame)
		} else {
			fmt.Fprintf(w, "  frame at %d: %d bytes, crc32c %08x, offsets %d..%d (%d records), %s\n",
				f.Pos, f.Size, f.Checksum, f.First, f.First+uint64(f.Count)-1, f.Count, time.Unix(0, f.Time).UTC().Format(timeFormat))
		}
		if opts.Records && !opts.JSON {
			wal.Records(h.Version, f.Payload, func(i int, rec []byte) bool {
				shownRec := rec[:min(len(rec), 64)]
				ellipsis := ""
				if len(rec) > len(shownRec) {
					ellipsis = "…"
				}
				fmt.Fprintf(w, "    %d: %q%s (%d bytes)\n", f.First+uint64(i), shownRec, ellipsis, len(rec))
				return true
			})
		}
	}
	if err := sc.Err(); err != nil {
		return false, err
	}
	switch foot, torn := sc.Footer(), sc.Torn(); {
	case foot != nil && opts.JSON:
		enc.Encode(map[string]any{"footer": foot.Pos, "next": foot.Next, "sealed": time.Unix(0, foot.Time).UTC(), "bytes": len(foot.Data)})
	case foot != nil:
		fmt.Fprintf(w, "  footer at %d: next offset %d, sealed %s, %d bytes of index\n", foot.Pos, foot.Next, time.Unix(0, foot.Time).UTC().Format(timeFormat), len(foot.Data))
	case torn != nil && !opts.JSON:
		fmt.Fprintf(w, "  torn tail at %d: %d bytes (%s)\n", torn.Pos, torn.Bytes, torn.Reason)
	case !opts.JSON:
		fmt.Fprintf(w, "  end of records at %d (active or unsealed)\n", sc.End())
	}
	return true, nil
}

func newDumpCommand() *cobra.Command {
	var o DumpOptions
	var since string
	cmd := &cobra.Command{
		Use:   "dump DIR",
		Short: "Show segment headers, frames (positions, sizes, checksums, batch boundaries) and footers",
		Args:  oneDir,
		RunE: func(cmd *cobra.Command, args []string) error {
			var at time.Time
			if err := startFlags(cmd, since, &o.From, &at); err != nil {
				return err
			}
			if !at.IsZero() {
				var err error
				if o.From, err = offsetAt(args[0], at); err != nil {
					return err
				}
			}
			return Dump(cmd.OutOrStdout(), args[0], o)
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "start at the frame of the first record appended since a duration ago (10m) or an RFC 3339 time")
	cmd.Flags().Int64Var(&o.From, "from", 0, "start at the frame holding this offset (default: the first frame)")
	cmd.Flags().IntVar(&o.Frames, "count", 0, "frames to show (default: all)")
	cmd.Flags().BoolVar(&o.Records, "records", false, "show each frame's records (text cut at 64 bytes; with --json, each record in full)")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "one JSON object per line")
	bound(cmd, "0", "", "from")
	bound(cmd, "1", "", "count")
	return cmd
}
