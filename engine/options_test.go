package engine

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math"
	"reflect"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/cache"
	"github.com/segstore/segstore/engine/internal/layout"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// TestOptionsResolve: every option and combination is either refused with
// an OptionError naming the field and what to change, or resolved to
// values that work: a segment holds at least two writes, and a full
// segment's index fits in its footer.
func TestOptionsResolve(t *testing.T) {
	shared, err := cache.New(1 << 20)
	require.NoError(t, err)
	defer shared.Close()
	const KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
	for _, tc := range []struct {
		name   string
		opts   Options
		option string // the field refused; "" if accepted
		says   string // in the error; or, accepted, the resolved MaxWrite/IndexInterval
		mw, iv int
	}{
		{name: "zero", opts: Options{}, mw: 4 * MiB, iv: 4 * KiB},
		{name: "defaults", opts: DefaultOptions(), mw: 4 * MiB, iv: 4 * KiB},
		{name: "smallest segment", opts: Options{SegmentSize: 64 * KiB}, mw: 16 * KiB, iv: 4 * KiB},
		{name: "1 GiB segments, 256 KiB writes", opts: Options{SegmentSize: 1 * GiB, MaxWrite: 256 * KiB}, mw: 256 * KiB, iv: 140 * KiB},
		{name: "1 GiB segments, derived", opts: Options{SegmentSize: 1 * GiB}, mw: 4 * MiB, iv: 12 * KiB},
		{name: "largest segment, smallest writes", opts: Options{SegmentSize: 16 * GiB, MaxWrite: 16 * KiB},
			option: "MaxWrite", says: "is too small for SegmentSize 16 GiB: a full segment's index would not fit in its footer"},
		{name: "two writes per segment", opts: Options{SegmentSize: 64 * KiB, MaxWrite: 32 * KiB}, mw: 32 * KiB, iv: 4 * KiB},
		{name: "shared cache, no budget of its own", opts: Options{Cache: shared, CacheBytes: 1}, mw: 4 * MiB, iv: 4 * KiB},

		{name: "1 GiB segments, 256 KiB writes, default interval", opts: Options{SegmentSize: 1 * GiB, MaxWrite: 256 * KiB, IndexInterval: 64 * KiB},
			option: "IndexInterval", says: "raise IndexInterval to at least 140 KiB (or leave it 0 to derive it), or raise MaxWrite, or lower SegmentSize"},
		{name: "1 GiB segments, 4 KiB interval", opts: Options{SegmentSize: 1 * GiB, IndexInterval: 4 * KiB},
			option: "IndexInterval", says: "is too small for SegmentSize 1 GiB with MaxWrite 4 MiB"},
		{name: "segment of one write", opts: Options{SegmentSize: 4 * MiB, MaxWrite: 4 * MiB},
			option: "MaxWrite", says: "lower MaxWrite to at most 2 MiB (or leave it 0 to derive it), or raise SegmentSize to at least 8 MiB"},
		{name: "segment smaller than a write", opts: Options{SegmentSize: 64 * KiB, MaxWrite: 4 * MiB},
			option: "MaxWrite", says: "is too large for SegmentSize 64 KiB"},
		{name: "tiny segment", opts: Options{SegmentSize: 1024}, option: "SegmentSize", says: "1 KiB is too small: use at least 64 KiB"},
		{name: "huge segment", opts: Options{SegmentSize: 32 * GiB}, option: "SegmentSize", says: "is too large: use at most 16 GiB"},
		{name: "tiny write", opts: Options{MaxWrite: 1000}, option: "MaxWrite", says: "1000 bytes is too small: use at least 16 KiB"},
		{name: "huge write", opts: Options{MaxWrite: 128 * MiB}, option: "MaxWrite", says: "is too large: use at most 64 MiB"},
		{name: "tiny interval", opts: Options{IndexInterval: 100}, option: "IndexInterval", says: "use at least 512 bytes"},
		{name: "huge interval", opts: Options{IndexInterval: 32 * MiB}, option: "IndexInterval", says: "use at most 16 MiB"},
		{name: "interval wider than a segment", opts: Options{SegmentSize: 64 * KiB, IndexInterval: 128 * KiB}, option: "IndexInterval", says: "is larger than SegmentSize 64 KiB: use at most that"},
		{name: "tiny cache", opts: Options{CacheBytes: 1000}, option: "CacheBytes", says: "use at least 64 KiB"},
		{name: "huge cache", opts: Options{CacheBytes: cache.MaxBytes + 1}, option: "CacheBytes", says: "is too large for a cache: use at most 256 GiB"},
		{name: "largest cache", opts: Options{CacheBytes: math.MaxInt64}, option: "CacheBytes", says: "use at most 256 GiB"},
		{name: "largest cache, shared cache", opts: Options{Cache: shared, CacheBytes: math.MaxInt64}, mw: 4 * MiB, iv: 4 * KiB},
		{name: "tiny sync interval", opts: Options{SyncMode: SyncInterval, SyncInterval: time.Nanosecond}, option: "SyncInterval", says: "1ns is too short: use at least 1ms"},
		{name: "sync interval just below the floor", opts: Options{SyncInterval: MinSyncInterval - 1}, option: "SyncInterval", says: "use at least 1ms"},
		{name: "smallest sync interval", opts: Options{SyncMode: SyncInterval, SyncInterval: MinSyncInterval}, mw: 4 * MiB, iv: 4 * KiB},
		{name: "unknown sync mode", opts: Options{SyncMode: 7}, option: "SyncMode", says: "use SyncAlways, SyncInterval or SyncNever"},
		{name: "negative segment", opts: Options{SegmentSize: -1}, option: "SegmentSize", says: "is negative: use a positive value, or 0 for the default, 64 MiB"},
		{name: "negative retention", opts: Options{RetentionBytes: -1}, option: "RetentionBytes", says: "0 for no limit"},
		{name: "negative age", opts: Options{SegmentAge: -1}, option: "SegmentAge", says: "-1ns is negative: use a positive value, or 0 for no age limit"},
		{name: "negative write", opts: Options{MaxWrite: -1}, option: "MaxWrite", says: "0 for a derived size"},
		{name: "negative open segments", opts: Options{MaxOpenSegments: -1}, option: "MaxOpenSegments", says: "-1 is negative: use a positive value, or 0 for the default, 64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.opts.resolve()
			if tc.option != "" {
				var oe *OptionError
				require.ErrorAs(t, err, &oe)
				assert.Equal(t, tc.option, oe.Option)
				assert.ErrorContains(t, err, "engine: Options."+tc.option+" ")
				assert.ErrorContains(t, err, tc.says)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.mw, got.MaxWrite, "MaxWrite")
			assert.Equal(t, tc.iv, got.IndexInterval, "IndexInterval")
			assert.GreaterOrEqual(t, got.SegmentSize, int64(segmentWrites*got.MaxWrite), "a segment holds two writes")
			assert.LessOrEqual(t, segmentEntries(got.SegmentSize, got.IndexInterval), footerEntries(got.MaxWrite), "a full segment's index fits its footer")
		})
	}
}

// TestOptionsDeriveEverySegmentSize: with MaxWrite and IndexInterval
// left to derive, every SegmentSize Open accepts resolves to values that
// work, and an explicit MaxWrite is either refused or gets an interval
// that fits.
func TestOptionsDeriveEverySegmentSize(t *testing.T) {
	for seg := int64(minSegmentSize); seg <= MaxSegmentSize; seg = seg*3/2 + 4096 {
		for _, mw := range []int{0, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 64 << 20} {
			got, err := Options{SegmentSize: seg, MaxWrite: mw}.resolve()
			if err != nil {
				var oe *OptionError
				require.ErrorAs(t, err, &oe, "SegmentSize %d MaxWrite %d", seg, mw)
				require.NotZero(t, mw, "a derived MaxWrite is never refused (SegmentSize %d): %v", seg, err)
				continue
			}
			require.GreaterOrEqual(t, got.SegmentSize, int64(segmentWrites*got.MaxWrite))
			require.LessOrEqual(t, segmentEntries(got.SegmentSize, got.IndexInterval), footerEntries(got.MaxWrite), "SegmentSize %d MaxWrite %d", seg, mw)
			// The footer of that many entries is one a writer of MaxWrite
			// seals (its frame within a write less a block).
			// (Its padding to the blocks is largest for a footer frame 32
			// bytes before a 4 KiB position.)
			footer, _ := layout.FooterV2Size(2*4096-wal.FrameHeaderLen, int(footerEntries(got.MaxWrite)))
			require.LessOrEqual(t, wal.FooterFrameSize(footer), got.MaxWrite-footerBlock)
		}
	}
}

// TestOpenRefusesWhatWouldWedge: the combinations that made every roll
// fail (a footer larger than one write) or every append roll (a segment
// no larger than a write) are refused at Open, before anything is
// created.
func TestOpenRefusesWhatWouldWedge(t *testing.T) {
	for _, o := range []Options{
		{SegmentSize: 4 << 20, MaxWrite: 16 << 10, IndexInterval: 512},
		{SegmentSize: 64 << 20, MaxWrite: 64 << 20},
		{SegmentSize: 256 << 10, MaxWrite: 256 << 10},
	} {
		dir := blockdev.NewSimDir(blockdev.SimOptions{})
		o.Dir, o.Logger = dir, quiet
		_, err := Open("sim", o)
		var oe *OptionError
		require.ErrorAs(t, err, &oe, "%+v", o)
		names, err := dir.List()
		require.NoError(t, err)
		assert.Empty(t, names, "a refused open creates nothing")
	}
}

// TestSegmentOfOtherOptionsRollsBeforeItsFooterFills: a segment created
// with a small MaxWrite, then filled by a log reopened with larger
// segments and writes, would get more index entries than its own footer
// frame holds; Append rolls it first, so its seal keeps every entry, and
// every record reads back, through its footer too.
func TestSegmentOfOtherOptionsRollsBeforeItsFooterFills(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	var logged bytes.Buffer
	small := Options{Dir: dir, SegmentSize: 64 << 10, MaxWrite: 16 << 10, IndexInterval: 1024, Logger: quiet}
	l, err := Open("sim", small)
	require.NoError(t, err)
	_, err = l.Append(modelRec(0))
	require.NoError(t, err)
	require.NoError(t, l.Close())

	// Accepted: a new segment of 1 MiB at 1 KiB has 1,021 entries, which
	// a 64 KiB write's footer holds (1,651); the active segment's 16 KiB
	// writes hold 127.
	big := Options{Dir: dir, SegmentSize: 1 << 20, MaxWrite: 64 << 10, IndexInterval: 1024,
		Logger: slog.New(slog.NewTextHandler(&logged, nil))}
	l, err = Open("sim", big)
	require.NoError(t, err)
	n := 1
	for len(l.Segments()) < 2 {
		_, err := l.Append(modelRec(n))
		require.NoError(t, err, "append %d", n)
		n++
	}
	first := l.Segments()[0]
	assert.Less(t, first.DataEnd, big.SegmentSize/2, "rolled for its footer, not its size")
	assert.LessOrEqual(t, first.IndexEntries, layout.FooterV2Fits(16<<10-4096-wal.FrameHeaderLen))
	assert.NotContains(t, logged.String(), "thinned")
	requireRecords(t, l, n)
	require.NoError(t, l.Close())
	big.VerifyOnOpen = true // read every footer
	l, err = Open("sim", big)
	require.NoError(t, err)
	requireRecords(t, l, n)
	require.NoError(t, l.Close())
}

// TestSealThinsAnOverfullIndex: appends in flight beside the one that
// decided to roll (here made directly on the segment's writer, as each of
// them has when the roll waits for it) can give a segment more index
// entries than its footer holds; the seal thins the index (and says so)
// instead of failing every roll, and every record reads back, through the
// thinned footer after a reopen too.
func TestSealThinsAnOverfullIndex(t *testing.T) {
	path := t.TempDir()
	var logged bytes.Buffer
	opts := Options{SegmentSize: 1 << 20, MaxWrite: 16 << 10, IndexInterval: 20 << 10, SyncMode: SyncNever,
		Logger: slog.New(slog.NewTextHandler(&logged, nil))}
	l, err := Open(path, opts)
	require.NoError(t, err)
	fits := l.active.footerFits(l.active.w.MaxBatchBytes())
	n := 0
	for len(l.active.index) <= 2*fits {
		_, err := l.active.w.Append(modelRec(n))
		require.NoError(t, err)
		n++
	}
	require.NoError(t, l.Roll(), "the seal of an overfull segment")
	assert.Contains(t, logged.String(), "thinned")
	requireRecords(t, l, n)
	_, err = l.Append(modelRec(n))
	require.NoError(t, err, "the log goes on")
	n++
	require.NoError(t, l.Close())
	opts.VerifyOnOpen = true // read every footer, the thinned one too
	l, err = Open(path, opts)
	require.NoError(t, err)
	assert.LessOrEqual(t, l.Segments()[0].IndexEntries, fits)
	requireRecords(t, l, n)
	require.NoError(t, l.Close())
	rep, err := Verify(path, VerifyOptions{})
	require.NoError(t, err)
	assert.Empty(t, rep.Problems, "verify finds nothing wrong with a thinned footer")
}

// modelRec is record i of the option tests: its offset, padded.
func modelRec(i int) []byte {
	label := fmt.Sprintf("record %06d ", i)
	return testutil.Labelled(label, byte(i), len(label)+500)
}

// requireRecords checks that l holds modelRec(i) at every offset below n.
func requireRecords(t *testing.T, l *Log, n int) {
	t.Helper()
	for i := range n {
		got, err := l.Read(uint64(i), nil)
		require.NoError(t, err, "record %d", i)
		require.Equal(t, modelRec(i), got, "record %d", i)
	}
}

// TestManyAppendersNearTheFooterBound: 128 appenders of one-interval
// records into segments whose full index is near what their footer
// holds: the appends in flight when a segment fills can overfill it (here
// they usually do, and its seal thins the index); every append succeeds
// and every record reads back, before and after a reopen.
func TestManyAppendersNearTheFooterBound(t *testing.T) {
	dir := blockdev.NewSimDir(blockdev.SimOptions{})
	// (SegmentSize-4096)/4096 + 2 = 63 entries, the 63 Open allows for
	// 16 KiB writes, whose footer holds 127.
	opts := Options{Dir: dir, SegmentSize: 61*4096 + 4096, MaxWrite: 16 << 10, IndexInterval: 4096, SyncMode: SyncNever, Logger: quiet}
	l, err := Open("sim", opts)
	require.NoError(t, err)
	rec := bytes.Repeat([]byte{7}, 4100) // every frame starts an interval
	var wg sync.WaitGroup
	for range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				if _, err := l.Append(rec); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	require.NoError(t, l.Sync())
	check := func(l *Log) {
		t.Helper()
		require.Equal(t, uint64(128*20), l.EndOffset())
		for off := range l.EndOffset() {
			got, err := l.Read(off, nil)
			require.NoError(t, err, "offset %d", off)
			require.Equal(t, rec, got, "offset %d", off)
		}
	}
	check(l)
	require.Greater(t, len(l.Segments()), 5, "segments rolled")
	require.NoError(t, l.Close())
	l, err = Open("sim", opts)
	require.NoError(t, err)
	check(l)
	require.NoError(t, l.Close())
}

// TestZeroOptionsAreTheDefaults: what Open makes of Options{} is what it
// makes of DefaultOptions(), as the Options doc says; a field added with a
// default that only DefaultOptions sets fails here.
func TestZeroOptionsAreTheDefaults(t *testing.T) {
	zero, err := Options{}.resolve()
	require.NoError(t, err)
	def, err := DefaultOptions().resolve()
	require.NoError(t, err)
	zero.Logger, def.Logger = nil, nil // the same slog.Default(); funcs do not compare
	zero.Now, def.Now = nil, nil
	assert.Equal(t, def, zero)
}

// TestZeroOptionsOpenAndWork: a log opened with nothing set but the
// directory appends, reads back and reopens, with a preallocated segment.
func TestZeroOptionsOpenAndWork(t *testing.T) {
	dir := zeroGrowDir{blockdev.NewSimDir(blockdev.SimOptions{})}
	for range 2 {
		l, err := Open("sim", Options{Dir: dir, Logger: quiet})
		require.NoError(t, err)
		_, err = l.Append([]byte(fmt.Sprintf("record %d", l.EndOffset())))
		require.NoError(t, err)
		for off := range l.EndOffset() {
			rec, err := l.Read(off, nil)
			require.NoError(t, err)
			assert.Equal(t, fmt.Sprintf("record %d", off), string(rec))
		}
		size, err := dir.Size(segName(0))
		require.NoError(t, err)
		assert.Equal(t, DefaultOptions().SegmentSize, size, "preallocated by default")
		require.NoError(t, l.Close())
	}
}

// zeroGrowDir is a simulated directory whose devices take aligned writes
// of zeros wholly past a file's end as a growth of the file to their end,
// which reads back the same zeros, made at the device's next call.
// Preallocating a segment of the default 64 MiB then costs one growth of
// the simulated device's images instead of 64 MiB copied into them (about
// 2.5 s per open under -race). Any other write, and a misaligned one (so
// that it is refused as the device refuses it), goes to the device as it
// is.
type zeroGrowDir struct{ blockdev.Dir }

func (d zeroGrowDir) Open(name string, opts blockdev.Options) (blockdev.Device, error) {
	dev, err := d.Dir.Open(name, opts)
	if err != nil {
		return nil, err
	}
	return &zeroGrowDevice{Device: dev}, nil
}

type zeroGrowDevice struct {
	blockdev.Device
	mu   sync.Mutex
	grow int64 // where the zeros written past the end end; 0 once the device has them
}

// grown gives the device the zeros written past its end.
func (d *zeroGrowDevice) grown() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.grow == 0 {
		return nil
	}
	end := d.grow
	d.grow = 0
	return d.Device.Allocate(0, end)
}

func (d *zeroGrowDevice) WriteAt(p []byte, off int64) (int, error) {
	a := d.Alignment()
	aligned := len(p) > 0 && off%int64(a.Offset) == 0 && len(p)%a.Offset == 0 &&
		uintptr(unsafe.Pointer(&p[0]))%uintptr(a.Memory) == 0
	if aligned && bytes.Count(p, []byte{0}) == len(p) {
		d.mu.Lock()
		size, err := d.Device.Size()
		if err == nil && off >= size {
			d.grow = max(d.grow, off+int64(len(p)))
			d.mu.Unlock()
			return len(p), nil
		}
		d.mu.Unlock()
	}
	if err := d.grown(); err != nil {
		return 0, err
	}
	return d.Device.WriteAt(p, off)
}

func (d *zeroGrowDevice) ReadAt(p []byte, off int64) (int, error) {
	if err := d.grown(); err != nil {
		return 0, err
	}
	return d.Device.ReadAt(p, off)
}

func (d *zeroGrowDevice) Sync() error {
	if err := d.grown(); err != nil {
		return err
	}
	return d.Device.Sync()
}

func (d *zeroGrowDevice) Allocate(off, n int64) error {
	if err := d.grown(); err != nil {
		return err
	}
	return d.Device.Allocate(off, n)
}

func (d *zeroGrowDevice) Truncate(size int64) error {
	if err := d.grown(); err != nil {
		return err
	}
	return d.Device.Truncate(size)
}

func (d *zeroGrowDevice) Size() (int64, error) {
	if err := d.grown(); err != nil {
		return 0, err
	}
	return d.Device.Size()
}

func (d *zeroGrowDevice) Close() error {
	if err := d.grown(); err != nil {
		d.Device.Close()
		return err
	}
	return d.Device.Close()
}

// optionRow sets one Options field to a value other than its default.
type optionRow struct {
	field string
	set   func(*Options)
}

// optionRows has a row for every Options field (TestOptionRowsCoverEveryField).
// Each row goes with the others' base, Options{Dir: a simulated directory,
// Logger: a discarding one}.
func optionRows(t *testing.T) []optionRow {
	shared, err := cache.New(1 << 20)
	require.NoError(t, err)
	t.Cleanup(shared.Close)
	other := slog.New(slog.NewTextHandler(io.Discard, nil))
	clock := func() time.Time { return time.Unix(1e9, 0) }
	return []optionRow{
		{"SegmentSize", func(o *Options) { o.SegmentSize = 1 << 20 }},
		{"SegmentAge", func(o *Options) { o.SegmentAge = time.Hour }},
		{"SyncMode", func(o *Options) { o.SyncMode = SyncNever }},
		{"SyncInterval", func(o *Options) { o.SyncMode, o.SyncInterval = SyncInterval, 5*time.Millisecond }},
		{"CacheBytes", func(o *Options) { o.CacheBytes = 1 << 20 }},
		{"Cache", func(o *Options) { o.Cache = shared }},
		{"RetentionBytes", func(o *Options) { o.RetentionBytes = 1 << 30 }},
		{"RetentionAge", func(o *Options) { o.RetentionAge = time.Hour }},
		{"MaxOpenSegments", func(o *Options) { o.MaxOpenSegments = 3 }},
		{"IndexInterval", func(o *Options) { o.IndexInterval = 8 << 10 }},
		{"NoPreallocate", func(o *Options) { o.NoPreallocate = true }},
		{"ReadOnly", func(o *Options) { o.ReadOnly = true }},
		{"VerifyOnOpen", func(o *Options) { o.VerifyOnOpen = true }},
		// On the directory Open opens (not preallocated: no 64 MiB of zeros on disk).
		{"Buffered", func(o *Options) { o.Buffered, o.Dir, o.NoPreallocate = true, nil, true }},
		{"MaxWrite", func(o *Options) { o.MaxWrite = 32 << 10 }},
		{"ExportDropCache", func(o *Options) { o.ExportDropCache = true }},
		{"Logger", func(o *Options) { o.Logger = other }},
		{"Now", func(o *Options) { o.Now = clock }},
		{"Dir", func(o *Options) { o.Dir = zeroGrowDir{blockdev.NewSimDir(blockdev.SimOptions{Seed: 2})} }},
	}
}

// requireCallersOptions checks that every field set in given has, in used,
// the caller's value (the same pointer, func or Dir for those).
func requireCallersOptions(t *testing.T, given, used Options) {
	t.Helper()
	g, u := reflect.ValueOf(given), reflect.ValueOf(used)
	for i := range g.NumField() {
		gf, uf, name := g.Field(i), u.Field(i), g.Type().Field(i).Name
		switch {
		case gf.IsZero():
		case gf.Kind() == reflect.Func || gf.Kind() == reflect.Pointer:
			assert.Equal(t, gf.Pointer(), uf.Pointer(), "Options.%s is not the caller's", name)
		case gf.Kind() == reflect.Interface:
			assert.True(t, gf.Interface() == uf.Interface(), "Options.%s is not the caller's", name)
		default:
			assert.Equal(t, gf.Interface(), uf.Interface(), "Options.%s is not the caller's", name)
		}
	}
}

// TestOptionRowsCoverEveryField: optionRows has one row for each Options
// field, and each sets its field to a value other than the default.
func TestOptionRowsCoverEveryField(t *testing.T) {
	def, err := DefaultOptions().resolve()
	require.NoError(t, err)
	var fields []string
	for _, f := range reflect.VisibleFields(reflect.TypeFor[Options]()) {
		fields = append(fields, f.Name)
	}
	var rows []string
	for _, row := range optionRows(t) {
		rows = append(rows, row.field)
		o := def
		row.set(&o)
		got, dflt := reflect.ValueOf(o).FieldByName(row.field), reflect.ValueOf(def).FieldByName(row.field)
		if got.Kind() == reflect.Func || got.Kind() == reflect.Pointer {
			assert.NotEqual(t, dflt.Pointer(), got.Pointer(), row.field)
		} else {
			assert.NotEqual(t, dflt.Interface(), got.Interface(), row.field)
		}
	}
	assert.ElementsMatch(t, fields, rows)
}

// TestOpenKeepsEveryOptionAsGiven: each Options field set by itself is the
// value the log runs with, and the rest are the defaults; Buffered and
// NoPreallocate also show in the files.
func TestOpenKeepsEveryOptionAsGiven(t *testing.T) {
	def, err := DefaultOptions().resolve()
	require.NoError(t, err)
	for _, row := range optionRows(t) {
		t.Run(row.field, func(t *testing.T) {
			o := Options{Dir: zeroGrowDir{blockdev.NewSimDir(blockdev.SimOptions{})}, Logger: quiet}
			row.set(&o)
			path := t.TempDir()
			if o.ReadOnly { // a read-only open needs a log
				w := o
				w.ReadOnly = false
				l, err := Open(path, w)
				require.NoError(t, err)
				require.NoError(t, l.Close())
			}
			l, err := Open(path, o)
			require.NoError(t, err)
			defer l.Close()
			used := l.Options()
			requireCallersOptions(t, o, used)
			// What the caller left zero is the default (derived fields
			// aside; the references are compared by requireCallersOptions,
			// and a failure would print the whole simulated directory).
			want, got := def, used
			row.set(&want)
			assert.True(t, want.Cache == got.Cache, "Options.Cache")
			for _, o := range []*Options{&want, &got} {
				o.Dir, o.Logger, o.Now, o.Cache, o.MaxWrite, o.IndexInterval = nil, nil, nil, nil, 0, 0
			}
			assert.Equal(t, want, got)

			if o.Buffered {
				assert.False(t, l.Storage().Direct, "Buffered: segment files are opened without O_DIRECT")
			}
			if !o.ReadOnly {
				size, err := l.dir.Size(segName(0))
				require.NoError(t, err)
				assert.Equal(t, !o.NoPreallocate, size == used.SegmentSize, "the first segment is preallocated unless NoPreallocate (file of %d bytes)", size)
			}
		})
	}
}
