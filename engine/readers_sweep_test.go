package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// readerRecord is the largest record size of the readers sweep.
const readerRecord = 1500

// readerErrors collects what the sweep's readers found wrong, so the
// first few are reported (a broken reader would otherwise flood the log).
type readerErrors struct {
	mu   sync.Mutex
	errs []string
	n    atomic.Int64
}

func (r *readerErrors) add(format string, args ...any) {
	r.n.Add(1)
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.errs) < 10 {
		r.errs = append(r.errs, fmt.Sprintf(format, args...))
	}
}

// allowed reports whether err is one a reader may see while the log
// changes: none, or an offset or segment that is no longer (or not yet)
// there.
func allowed(err error) bool { return err == nil || errors.Is(err, ErrOutOfRange) }

// TestReadersDuringEveryStateChange: while one goroutine appends, rolls,
// seals, truncates back and front, lets retention drop segments and
// imports them into a follower (a
// random script per seed), point readers, iterators (fresh ones and one
// that tails the log throughout), Wait callers and exporters (views read
// by ReadAt and WriteTo, mappings walked in place) run beside it. None of
// them may see an error other than ErrOutOfRange, or a wrong byte: every
// record carries its offset, every sealed export must pass an import's
// checks, and every export of the active segment must be whole frames up
// to its size. A follower imports the sealed segments meanwhile, with the
// same readers on it. A real directory, so views and mappings work. Seeds
// alternate preallocated files on and off; SEGSTORE_LONG=1 runs 30.
func TestReadersDuringEveryStateChange(t *testing.T) {
	for _, seed := range testutil.Seeds(t, 2, 30) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { readersDuringStateChanges(t, seed) })
	}
}

func readersDuringStateChanges(t *testing.T, seed uint64) {
	o := DefaultOptions()
	o.SegmentSize, o.MaxWrite, o.IndexInterval, o.CacheBytes, o.Logger = minSegmentSize, 16<<10, 4096, 256<<10, quiet
	o.RetentionBytes = 6 * minSegmentSize
	o.NoPreallocate = seed%2 == 0
	l, err := Open(t.TempDir(), o)
	require.NoError(t, err)
	defer l.Close()
	appendOff(t, l, 50, readerRecord)
	f, err := Open(t.TempDir(), o) // a follower: imports l's sealed segments
	require.NoError(t, err)
	defer f.Close()

	var bad readerErrors
	var reads, exports atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var readers uint64
	reader := func(name string, fn func(rng *rand.Rand)) { // name: for the reader of the code
		readers++
		stream := readers
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, stream))
			for ctx.Err() == nil {
				fn(rng)
			}
		}()
	}
	for _, l := range []*Log{l, f} {
		reader("read", func(rng *rand.Rand) {
			start, end := l.StartOffset(), l.DurableOffset()
			if end <= start {
				return
			}
			off := start + rng.Uint64N(end-start)
			got, err := l.Read(off, nil)
			switch {
			case !allowed(err):
				bad.add("read %d: %v", off, err)
			case err == nil:
				reads.Add(1)
				if err := checkOffRecordUpTo(off, got); err != nil {
					bad.add("read: %v", err)
				}
			}
		})
		reader("iterate", func(rng *rand.Rand) {
			it := l.NewIterator(l.StartOffset())
			defer it.Close()
			iterate(it, &bad, &reads, "iterator")
		})
		reader("wait", func(rng *rand.Rand) {
			off := l.DurableOffset()
			if err := l.Wait(ctx, off); err != nil {
				if ctx.Err() == nil {
					bad.add("wait %d: %v", off, err)
				}
				return
			}
			got, err := l.Read(off, nil)
			switch {
			case !allowed(err):
				bad.add("read %d after its wait: %v", off, err)
			case err == nil:
				if err := checkOffRecordUpTo(off, got); err != nil {
					bad.add("read after wait: %v", err)
				}
			}
		})
		reader("export", func(rng *rand.Rand) {
			for _, si := range l.Segments() {
				exportOne(l, si.Base, &bad)
				exports.Add(1)
			}
		})
	}
	tail := l.NewIterator(0) // one iterator that follows the log throughout
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer tail.Close()
		for ctx.Err() == nil {
			iterate(tail, &bad, &reads, "tailing iterator")
			if tail.Err() != nil {
				tail.Close()
				tail = l.NewIterator(l.StartOffset())
			}
			_ = l.Wait(ctx, tail.next)
		}
	}()

	rng := rand.New(rand.NewPCG(seed, 1))
	var rolls, backs, fronts, imports int
	for step := 0; step < 200; step++ {
		start, end := l.StartOffset(), l.EndOffset()
		switch r := rng.IntN(100); {
		case r < 70:
			batch := make([][]byte, 1+rng.IntN(4))
			for i := range batch {
				batch[i] = offRecord(end+uint64(i), 8+rng.IntN(readerRecord))
			}
			first, err := l.Append(batch...)
			require.NoError(t, err)
			require.Equal(t, end, first)
		case r < 80:
			require.NoError(t, l.Roll())
			rolls++
		case r < 88:
			from := max(start, end-min(end, uint64(rng.IntN(60))))
			require.NoError(t, l.TruncateBack(from))
			backs++
		case r < 94:
			before := min(end, start+uint64(rng.IntN(40)))
			require.NoError(t, l.TruncateFront(before))
			fronts++
		default:
			require.NoError(t, l.Sync())
		}
		if importNext(t, l, f) {
			imports++
		}
	}
	cancel()
	wg.Wait()
	for _, e := range bad.errs {
		t.Error(e)
	}
	require.Zero(t, bad.n.Load(), "readers saw errors or wrong bytes")
	require.Positive(t, reads.Load())
	require.Positive(t, exports.Load())
	require.Positive(t, imports)
	t.Logf("%d rolls, %d TruncateBack, %d TruncateFront, %d imports, %d segments at the end; readers: %d records, %d exports",
		rolls, backs, fronts, imports, len(l.Segments()), reads.Load(), exports.Load())
}

// importNext imports into f the sealed segment of l that continues it (any
// one, while f is empty), if there is one, and reports whether it did.
func importNext(t *testing.T, l, f *Log) bool {
	t.Helper()
	end, empty := f.EndOffset(), len(f.Segments()) == 1 && f.EndOffset() == f.Segments()[0].Base
	for _, si := range l.Segments() {
		if !si.Sealed || (si.Base != end && !(empty && si.Base >= end)) {
			continue
		}
		v, err := l.OpenSegment(si.Base)
		if errors.Is(err, ErrOutOfRange) {
			return false // dropped meanwhile
		}
		require.NoError(t, err)
		defer v.Close()
		_, err = f.ImportSegment(io.NewSectionReader(v, 0, v.Size()), si.Base, v.Size())
		require.NoError(t, err, "import segment %d", si.Base)
		return true
	}
	return false
}

// checkOffRecordUpTo checks a record of the readers sweep, whose size was
// drawn at random: offRecord's bytes depend only on the offset and the
// length, so it must be offRecord(off, n) for its own length n.
func checkOffRecordUpTo(off uint64, got []byte) error {
	if len(got) >= 8 && bytes.Equal(offRecord(off, len(got)+int(off*37%64)), got) {
		return nil
	}
	return fmt.Errorf("offset %d: %d bytes that are not its record (%x...)", off, len(got), got[:min(len(got), 8)])
}

// iterate runs it until it catches up, checking that offsets follow each
// other and every record; an error must be ErrOutOfRange.
func iterate(it *Iterator, bad *readerErrors, reads *atomic.Int64, what string) {
	last, have := uint64(0), false
	for it.Next() {
		if have && it.Offset() != last+1 {
			bad.add("%s: offset %d after %d", what, it.Offset(), last)
		}
		last, have = it.Offset(), true
		if err := checkOffRecordUpTo(it.Offset(), it.Record()); err != nil {
			bad.add("%s: %v", what, err)
		}
		reads.Add(1)
	}
	if !allowed(it.Err()) {
		bad.add("%s: %v", what, it.Err())
	}
}

// exportOne opens the segment at base for export and checks every way out
// of it: ReadAt and WriteTo give the same bytes; a sealed one passes an
// import's checks and its mapping walks to the same records; an active one
// is whole frames up to its size.
func exportOne(l *Log, base uint64, bad *readerErrors) {
	v, err := l.OpenSegment(base)
	if !allowed(err) {
		bad.add("open segment %d: %v", base, err)
	}
	if err != nil {
		return
	}
	defer v.Close()
	info := v.Info()
	b := make([]byte, v.Size())
	if n, err := v.ReadAt(b, 0); n != len(b) || (err != nil && err != io.EOF) {
		bad.add("segment %d: ReadAt %d of %d bytes: %v", base, n, len(b), err)
		return
	}
	var buf bytes.Buffer
	if _, err := v.WriteTo(&buf); err != nil || !bytes.Equal(buf.Bytes(), b) {
		bad.add("segment %d: WriteTo gave %d bytes (err %v), ReadAt %d", base, buf.Len(), err, len(b))
	}
	if !info.Sealed {
		hdr, err := wal.DecodeFileHeader(b)
		if err != nil {
			bad.add("active segment %d export: %v", base, err)
			return
		}
		end, next, err := wal.DecodeFrames(b[wal.DataStart:], hdr, wal.DataStart, base, func(f wal.Frame) bool {
			wal.Records(hdr.Version, f.Payload, func(i int, rec []byte) bool {
				if err := checkOffRecordUpTo(f.First+uint64(i), rec); err != nil {
					bad.add("active segment %d export: %v", base, err)
				}
				return true
			})
			return true
		})
		if err != nil || end != int64(len(b)) || next != info.Next {
			bad.add("active segment %d export of %d bytes: frames end at %d, offset %d (want %d): %v", base, len(b), end, next, info.Next, err)
		}
		return
	}
	s := l.newSegment(base, blockdev.NewSimFrom(b, blockdev.SimOptions{Name: "export"}))
	err = l.verifyImport(s)
	s.release()
	if err != nil || s.vis().off != info.Next {
		bad.add("sealed segment %d export (%d bytes, next %d): an import refuses it: %v", base, len(b), info.Next, err)
	}
	m, err := v.Mmap()
	if err != nil {
		bad.add("sealed segment %d: mmap: %v", base, err)
		return
	}
	defer m.Close()
	it := m.NewIterator()
	next := base
	for it.Next() {
		if it.Offset() != next {
			bad.add("mapping of %d: offset %d, want %d", base, it.Offset(), next)
		}
		if err := checkOffRecordUpTo(it.Offset(), it.Record()); err != nil {
			bad.add("mapping of %d: %v", base, err)
		}
		next++
	}
	if it.Err() != nil || next != info.Next {
		bad.add("mapping of %d: stopped at %d of %d: %v", base, next, info.Next, it.Err())
	}
}
