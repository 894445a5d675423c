package wal

// Cases of the torn-tail rule (scan.go stop, tornAt, validFrameAfter,
// oneBitExplains) that an adversarial reading of it found: damage that
// was taken for a tear, tears that were taken for damage, and hostile files
// that made recovery slow or large.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
)

// ackedFile appends the batches one after another in SyncAlways mode (each
// acknowledged before the next) and returns the image, every acknowledged
// record, and the position of the last frame.
func ackedFile(t *testing.T, opts Options, batches ...[][]byte) (image []byte, acked map[uint64][]byte, lastPos, end int64) {
	t.Helper()
	dev := blockdev.NewSim(blockdev.SimOptions{Name: "attack"})
	w, err := Create(dev, 0, opts)
	require.NoError(t, err)
	acked = map[uint64][]byte{}
	for _, b := range batches {
		pos, _ := w.Durable()
		first, err := w.Append(b...)
		require.NoError(t, err)
		for i, r := range b {
			acked[first+uint64(i)] = r
		}
		lastPos = pos
	}
	require.NoError(t, w.Close())
	rec, err := Recover(dev)
	require.NoError(t, err)
	require.Nil(t, rec.Torn)
	return dev.Bytes(), acked, lastPos, rec.End
}

// requireNotCut recovers img and requires that either corruption is
// reported, or every acknowledged record comes back intact (nothing
// acknowledged cut as a torn tail).
func requireNotCut(t *testing.T, img []byte, acked map[uint64][]byte, msg string) {
	t.Helper()
	got, rec, err := tryReadAll(blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "attack"}))
	if err != nil {
		require.ErrorIs(t, err, ErrCorrupt, msg)
		return
	}
	var torn string
	if rec.Torn != nil {
		torn = fmt.Sprintf("cut as a torn tail at %d (%d bytes): %s", rec.Torn.Pos, rec.Torn.Bytes, rec.Torn.Reason)
	}
	for off, want := range acked {
		require.True(t, bytes.Equal(want, got[off]), "%s: acknowledged record %d lost; %s", msg, off, torn)
	}
}

// TestTwoLengthBitsOfTheLastFrameAreCorruption: two flipped bits in the
// length of the last acknowledged frame (no single bit explains them, the
// frame has no zero sector) are corruption: the records, walked by their
// own prefixes, end within the data, so the length is not believed.
func TestTwoLengthBitsOfTheLastFrameAreCorruption(t *testing.T) {
	img0, acked, last, _ := ackedFile(t, Options{}, batch(0, 3), batch(3, 2), [][]byte{testutil.Record(5, 300)})
	cut, tried := 0, 0
	var example string
	for b1 := 0; b1 < 32; b1++ {
		for b2 := b1 + 1; b2 < 32; b2++ {
			img := append([]byte(nil), img0...)
			img[last+8+int64(b1/8)] ^= 1 << (b1 % 8)
			img[last+8+int64(b2/8)] ^= 1 << (b2 % 8)
			tried++
			_, rec, err := tryReadAll(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
			if err == nil && rec.Torn != nil {
				cut++
				if example == "" {
					example = fmt.Sprintf("length bits %d and %d: %+v", b1, b2, *rec.Torn)
				}
			}
		}
	}
	t.Logf("%d of %d two-bit length flips of the last acknowledged frame cut it as a torn tail; e.g. %s", cut, tried, example)
	// The simplest one, through Open: the acknowledged record is gone.
	img := append([]byte(nil), img0...)
	img[last+10] ^= 0x03 // length bits 16 and 17: +196 KiB, within MaxWrite
	dev := blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "attack"})
	w, rec, err := Open(dev, Options{})
	if err == nil {
		require.NoError(t, w.Close())
		got, _ := readAll(t, dev)
		require.Equal(t, acked[5], got[5], "Open cut acknowledged record 5 as a torn tail: %+v", rec.Torn)
	}
	require.ErrorIs(t, err, ErrCorrupt)
	require.Zero(t, cut, "two flipped length bits of an acknowledged frame must be corruption")
}

// TestTornHeaderAcrossASectorIsATornTail: a frame whose header starts 8
// bytes before a sector boundary is the last write, and the crash keeps the
// sector holding its start and loses the next: the header runs into the
// zeros after the data, which only a lost sector leaves, so it is a torn
// tail.
func TestTornHeaderAcrossASectorIsATornTail(t *testing.T) {
	hit := 0
	for seed := uint64(1); seed <= 64; seed++ {
		dev := blockdev.NewSim(blockdev.SimOptions{Name: "tear", Seed: seed})
		w, err := Create(dev, 0, Options{})
		require.NoError(t, err)
		_, err = w.Append(testutil.Record(0, 464)) // frame 4096..4600
		require.NoError(t, err)
		pos, _ := w.Durable()
		require.EqualValues(t, 504, pos%512)
		dev.FailNth(blockdev.OpSync, dev.Calls(blockdev.OpSync)+1)
		_, err = w.Append(testutil.Record(1, 100)) // written, never acknowledged
		require.Error(t, err)
		img := dev.Crash(blockdev.CrashTear)
		if !bytes.Equal(img[pos:pos+8], make([]byte, 8)) && isZero(img[pos+8:]) {
			hit++
		}
		_, rec, err := Open(blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "tear"}), Options{})
		require.NoError(t, err, "seed %d: a torn unacknowledged write reported as corruption (first sector of the frame kept: %v)",
			seed, !isZero(img[pos:pos+8]))
		_ = rec
	}
	t.Logf("%d seeds kept only the frame's first 8 bytes", hit)
}

// TestVersion1TornGroupFlushIsATornTail: in a version 1 file (frames
// without marks) a crash that tears a flush of several frames is a torn
// tail: a valid frame after the damage proves nothing there.
func TestVersion1TornGroupFlushIsATornTail(t *testing.T) {
	image, err := os.ReadFile("testdata/v1-frames.wal")
	require.NoError(t, err)
	bad := 0
	for seed := uint64(1); seed <= 32; seed++ {
		dev := blockdev.NewSimFrom(image, blockdev.SimOptions{Name: "v1", Seed: seed})
		w, rec, err := Open(dev, Options{SyncMode: SyncNever})
		require.NoError(t, err)
		next := rec.NextOffset
		for i := 0; i < 8; i++ { // eight frames, one write, one sync
			_, err := w.Append(testutil.Record(next, 1000))
			require.NoError(t, err)
			next++
		}
		dev.FailNth(blockdev.OpSync, dev.Calls(blockdev.OpSync)+1)
		require.Error(t, w.Sync()) // written, the sync fails: nothing acknowledged
		img := dev.Crash(blockdev.CrashTear)
		_, _, err = Open(blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "v1"}), Options{})
		if err != nil {
			bad++
			t.Logf("seed %d: %v", seed, err)
		}
	}
	require.Zero(t, bad, "torn unsynced writes to a version 1 file reported as corruption")
}

// TestVersion2TornGroupFlushIsATornTail: the same crash on a version 2 file.
func TestVersion2TornGroupFlushIsATornTail(t *testing.T) {
	for seed := uint64(1); seed <= 32; seed++ {
		dev := blockdev.NewSim(blockdev.SimOptions{Name: "v2", Seed: seed})
		w, err := Create(dev, 0, Options{SyncMode: SyncNever})
		require.NoError(t, err)
		for i := 0; i < 4; i++ {
			_, err := w.Append(testutil.Record(uint64(i), 100))
			require.NoError(t, err)
		}
		require.NoError(t, w.Sync())
		for i := 4; i < 12; i++ {
			_, err := w.Append(testutil.Record(uint64(i), 1000))
			require.NoError(t, err)
		}
		dev.FailNth(blockdev.OpSync, dev.Calls(blockdev.OpSync)+1)
		require.Error(t, w.Sync())
		img := dev.Crash(blockdev.CrashTear)
		_, _, err = Open(blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "v2"}), Options{})
		require.NoError(t, err, "seed %d", seed)
	}
}

// hostileCandidates is a file whose header says maxWrite and whose first
// maxWrite-64 bytes of frames are, at every 8-byte position, a frame header
// that decodes (type 1, count 1, a length of plen) and fails its checksum.
func hostileCandidates(maxWrite, plen uint32) []byte {
	img := make([]byte, DataStart+2*int(maxWrite))
	EncodeFileHeader(img, FileHeader{SegmentID: 1, MaxWrite: maxWrite})
	var slot [8]byte
	binary.LittleEndian.PutUint32(slot[0:4], plen) // read as crc by this position, as length by the one before
	slot[4] = FrameRecords                         // type; with the next 3 zero bytes: count 1 for the position before
	for p := DataStart; p+8 <= DataStart+int(maxWrite)-64; p += 8 {
		copy(img[p:], slot[:])
	}
	return img
}

// TestHostileCandidatesAreBounded: a file holding a plausible frame header
// at every position after damage costs a bounded amount of checksumming
// (candidateBudget), not MaxWrite bytes per position.
func TestHostileCandidatesAreBounded(t *testing.T) {
	// At the default MaxWrite, a quadratic scan would checksum 2^39 bytes
	// (hours); bounded, it is at most candidateBudget × 4 MiB.
	img := hostileCandidates(4<<20, 4<<20-64)
	_, err := Recover(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	require.ErrorIs(t, err, ErrCorrupt)
}

// maxReadDev records the largest single read.
type maxReadDev struct {
	*blockdev.Sim
	max int
}

func (d *maxReadDev) ReadAt(p []byte, off int64) (int, error) {
	d.max = max(d.max, len(p))
	return d.Sim.ReadAt(p, off)
}

// TestHostileMaxWriteIsRefused: a header whose MaxWrite no writer uses is
// corruption, so the torn-tail window and what recovery reads stay bounded.
func TestHostileMaxWriteIsRefused(t *testing.T) {
	const size = 160 << 20
	img := make([]byte, size)
	EncodeFileHeader(img, FileHeader{SegmentID: 1, MaxWrite: 0xfffffff8})
	img[DataStart] = 1 // garbage where the first frame should be
	img[size-1] = 1    // stray data 160 MiB later
	dev := &maxReadDev{Sim: blockdev.NewSimFrom(img, blockdev.SimOptions{})}
	rec, err := Recover(dev)
	var torn *TornTail
	if rec != nil {
		torn = rec.Torn
	}
	t.Logf("largest read %d MiB; err %v; torn %+v", dev.max>>20, err, torn)
	require.Nil(t, torn, "data 160 MiB past the damage taken for a torn tail")
	require.LessOrEqual(t, dev.max, 2*MaxFramePayload+scanChunk, "one read (and buffer) of %d bytes", dev.max)
}

// gateDev blocks the WriteAt calls whose numbers are in gates until
// released.
type gateDev struct {
	*blockdev.Sim
	mu      sync.Mutex
	n       int
	gates   map[int]chan struct{}
	entered chan int
}

func (d *gateDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	d.n++
	g := d.gates[d.n]
	n := d.n
	d.mu.Unlock()
	if g != nil {
		d.entered <- n
		<-g
	}
	return d.Sim.WriteAt(p, off)
}

// TestMarksReachPastTheLargestWindow: with the largest MaxWrite, SyncNever
// and flushes in flight, every frame a writer makes carries a durable mark,
// and a tear of its unsynced writes is a torn tail (with SEGSTORE_LONG=1:
// it holds about 200 MiB).
func TestMarksReachPastTheLargestWindow(t *testing.T) {
	if !testutil.Long() {
		t.Skip("holds about 200 MiB: SEGSTORE_LONG=1")
	}
	const mb = 1 << 20
	dev := &gateDev{Sim: blockdev.NewSim(blockdev.SimOptions{Name: "big"}), entered: make(chan int, 4),
		gates: map[int]chan struct{}{2: make(chan struct{}), 3: make(chan struct{}), 4: make(chan struct{})}}
	w, err := Create(dev, 0, Options{MaxWrite: 64 * mb, SyncMode: SyncNever})
	require.NoError(t, err)
	next := uint64(0)
	app := func(n, size int) {
		for i := 0; i < n; i++ {
			_, err := w.Append(testutil.Record(next, size))
			require.NoError(t, err)
			next++
		}
	}
	app(1, 10)
	require.Equal(t, 2, <-dev.entered) // write 1 (one small frame) in flight
	app(62, mb)                        // buffer B
	close(dev.gates[2])
	require.Equal(t, 3, <-dev.entered) // B being written (after a presync)
	app(62, mb)                        // buffer A'
	close(dev.gates[3])
	require.Equal(t, 4, <-dev.entered) // A' being written
	app(40, mb)                        // buffer B': reserved while durable is 190 MiB behind
	close(dev.gates[4])
	deadline := time.Now().Add(30 * time.Second)
	for { // the background flusher writes B' (unsynced)
		if pos, _ := w.Written(); pos > 4096+160*mb || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	img := dev.Sim.Crash(blockdev.CrashKeepAll) // as a tear that kept every sector so far

	s, err := NewScanner(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	require.NoError(t, err)
	var frames []Frame
	unmarked := 0
	for s.Next() {
		f := s.Frame()
		h, err := DecodeFrameHeader(img[f.Pos:], 64*mb)
		require.NoError(t, err)
		if _, ok := h.DurableBefore(f.Pos); !ok {
			unmarked++
		}
		frames = append(frames, Frame{Pos: f.Pos, Size: f.Size})
	}
	require.NoError(t, s.Err())
	t.Logf("%d frames, %d of them in a version 2 file without a durable mark", len(frames), unmarked)
	// The last write (B', 40 frames, unsynced) loses one sector in the
	// middle of its first frame.
	first := frames[len(frames)-40]
	sec := (first.Pos + int64(first.Size)/2) &^ 511
	clear(img[sec : sec+512])
	_, rec, err := tryReadAll(blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "big"}))
	require.NoError(t, err, "one lost sector of an unsynced write reported as corruption")
	require.NotNil(t, rec.Torn)
	require.Zero(t, unmarked, "a writer of a version 2 file made frames without a durable mark")
}

// TestLostSectorHoldingOneSetBitIsATornTail: a lost sector whose content
// was a single set bit differs from what was written in one bit, but the
// bit lies in a sector that reads all zero: a tear, not a flip.
func TestLostSectorHoldingOneSetBitIsATornTail(t *testing.T) {
	recs := [][]byte{testutil.Record(0, 984), make([]byte, 8)} // the 8-byte record's header starts at 5120, a sector boundary
	require.Equal(t, 5120, DataStart+FrameHeaderLen+RecordHeaderLen+984)
	bad, hit := 0, 0
	for seed := uint64(1); seed <= 48; seed++ {
		dev := blockdev.NewSim(blockdev.SimOptions{Name: "bit", Seed: seed})
		w, err := Create(dev, 0, Options{})
		require.NoError(t, err)
		dev.FailNth(blockdev.OpSync, dev.Calls(blockdev.OpSync)+1)
		_, err = w.Append(recs...) // written, never acknowledged
		require.Error(t, err)
		img := dev.Crash(blockdev.CrashTear)
		if img[5120] == 0 && !isZero(img[4096:4608]) && !isZero(img[4608:5120]) {
			hit++
		}
		if _, _, err := Open(blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "bit"}), Options{}); err != nil {
			bad++
			t.Logf("seed %d: %v", seed, err)
		}
	}
	t.Logf("%d seeds lost only the last sector", hit)
	require.Zero(t, bad, "torn unacknowledged writes reported as corruption")
}

// TestDamagedTypeByteIsNotAFooter: a mid-log frame whose type byte was
// damaged into the footer's is not reported as a damaged footer (which the
// engine would rebuild, cutting what follows): a footer is only the frame
// the file's tail names.
func TestDamagedTypeByteIsNotAFooter(t *testing.T) {
	var batches [][][]byte
	for i := 0; i < 10; i++ {
		batches = append(batches, batch(uint64(i*2), 2))
	}
	img0, acked, _, _ := ackedFile(t, Options{}, batches...)
	// The third frame.
	s, err := NewScanner(blockdev.NewSimFrom(img0, blockdev.SimOptions{}))
	require.NoError(t, err)
	for i := 0; i < 3; i++ {
		require.True(t, s.Next())
	}
	victim := s.Frame().Pos
	img := append([]byte(nil), img0...)
	img[victim+4] = FrameFooter // two bits of the type byte: 1 -> 2
	dev := blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "active"})
	_, err = Recover(dev)
	var ce *CorruptionError
	require.ErrorAs(t, err, &ce)
	if ce.InFooter { // what the engine does with it
		size, _ := dev.Size()
		require.NoError(t, Cut(dev, ce.Position, size))
		w, _, err := Open(dev, Options{})
		require.NoError(t, err)
		require.NoError(t, w.Close())
		got, _ := readAll(t, dev)
		t.Logf("after the engine's footer repair %d of %d acknowledged records are left", len(got), len(acked))
	}
	require.False(t, ce.InFooter, "a records frame followed by 7 valid, later frames reported as a damaged footer at %d", ce.Position)
}

// TestLastFrameDamagedIntoAFooterHeaderIsNotCut: the last acknowledged
// frame, its header damaged into a footer's (type 2, count 0; its durable
// mark is already 1), is not cut as a torn seal: a torn seal is a footer
// whose tail lies in the zeros after the data, and this frame's length
// still ends it within the data.
func TestLastFrameDamagedIntoAFooterHeaderIsNotCut(t *testing.T) {
	for _, v := range []uint32{1, Version} { // a version 1 footer's mark is 0, as every frame's
		img0, acked, last, _ := ackedFile(t, Options{Version: v, Preallocate: 64 << 10}, batch(0, 3), batch(3, 2), batch(5, 2))
		img := append([]byte(nil), img0...)
		h, err := DecodeFrameHeader(img[last:], MaxFramePayload)
		require.NoError(t, err)
		require.Equal(t, min(v-1, 1), h.mark, "the case needs a frame made when all before it was durable, as a footer is")
		img[last+4] = FrameFooter
		clear(img[last+12 : last+16])
		requireNotCut(t, img, acked, fmt.Sprintf("version %d: a records frame damaged into a footer's header", v))
	}
}

// TestZeroedTailBeforeACleanEndIsCorruption: frames that end, at zeros,
// before the end a clean close recorded are corruption, not a clean end.
func TestZeroedTailBeforeACleanEndIsCorruption(t *testing.T) {
	img0, acked, last, end := ackedFile(t, Options{Preallocate: 64 << 10}, batch(0, 3), batch(3, 2), batch(5, 2))
	img := append([]byte(nil), img0...)
	clear(img[last:end]) // the last frame zeroed
	s, err := NewScanner(blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "clean"}))
	require.NoError(t, err)
	s.TrustCleanEnd(end)
	got := map[uint64]bool{}
	for s.Next() {
		for i := 0; i < s.Frame().Count; i++ {
			got[s.Frame().First+uint64(i)] = true
		}
	}
	if s.Err() == nil {
		require.NotNil(t, s.Torn(), "frames ended at %d at the clean close; the scan ends at %d with no error and no torn tail: %d of %d acknowledged records silently gone",
			end, s.End(), len(acked)-len(got), len(acked))
	}
	require.ErrorIs(t, s.Err(), ErrCorrupt)
}

// TestDamageBeforeASealedFilesFooterIsCorruption: a seal makes the records
// durable before it writes the footer, so in a file whose tail names a
// footer, damage before it (a zeroed sector that also hit the footer's
// header) is corruption, and Open keeps refusing to write a sealed file.
func TestDamageBeforeASealedFilesFooterIsCorruption(t *testing.T) {
	dev := blockdev.NewSim(blockdev.SimOptions{Name: "sealed"})
	w, err := Create(dev, 0, Options{SyncMode: SyncNever})
	require.NoError(t, err)
	acked := map[uint64][]byte{}
	for i := uint64(0); i < 6; i++ {
		r := testutil.Record(i, 900)
		_, err := w.Append(r)
		require.NoError(t, err)
		acked[i] = r
	}
	foot, err := w.Seal([]byte("index"))
	require.NoError(t, err)
	img := dev.Bytes()
	require.EqualValues(t, len(img), foot.End)
	_, f, err := ReadSealed(blockdev.NewSimFrom(img, blockdev.SimOptions{}))
	require.NoError(t, err)
	require.NotNil(t, f)
	// A zeroed sector inside the last record frame, which ends at foot.Pos.
	sec := (foot.Pos - 400) &^ 511
	clear(img[sec : sec+512])
	sdev := blockdev.NewSimFrom(img, blockdev.SimOptions{Name: "sealed"})
	rec, err := Recover(sdev)
	if err == nil {
		t.Logf("Recover: footer %v, torn %+v", rec.Footer != nil, rec.Torn)
		w2, _, oerr := Open(sdev, Options{})
		if oerr == nil {
			w2.Close()
			got, _ := readAll(t, sdev)
			_, _, serr := ReadSealed(sdev)
			t.Logf("Open of a sealed file succeeded: %d of %d records left, ReadSealed now: %v", len(got), len(acked), serr)
		}
		require.ErrorIs(t, oerr, ErrSealed)
	}
	require.ErrorIs(t, err, ErrCorrupt, "damage inside a sealed file")
}

// TestReadSealedOfAHostileTailIsBounded: a tail naming the file's first
// frame, under a header claiming a huge MaxWrite, is refused without
// reading the whole file.
func TestReadSealedOfAHostileTailIsBounded(t *testing.T) {
	const size = 100 << 20
	img := make([]byte, size)
	EncodeFileHeader(img, FileHeader{SegmentID: 1, MaxWrite: 0xfffffff8})
	img[DataStart] = 1
	binary.LittleEndian.PutUint64(img[size-16:], DataStart)
	copy(img[size-8:], FooterMagic)
	dev := &maxReadDev{Sim: blockdev.NewSimFrom(img, blockdev.SimOptions{})}
	_, _, err := ReadSealed(dev)
	require.ErrorIs(t, err, ErrCorrupt)
	require.LessOrEqual(t, dev.max, MaxFramePayload+footerReadBack, "one read (and buffer) of %d MiB for a footer", dev.max>>20)
}
