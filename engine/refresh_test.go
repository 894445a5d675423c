package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/internal/testutil"
	"github.com/segstore/segstore/wal"
)

// readerOf opens the log at path read-only, as a second process would.
func readerOf(t *testing.T, path string) *Log {
	t.Helper()
	opts := realOptions()
	opts.ReadOnly = true
	r, err := Open(path, opts)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r
}

// besideWriter opens a writer in a fresh directory and a read-only log of
// it, as another process would; both are closed when the test ends.
func besideWriter(t *testing.T) (writer, reader *Log) {
	t.Helper()
	path := t.TempDir()
	writer = realLog(t, path)
	t.Cleanup(func() { writer.Close() })
	return writer, readerOf(t, path)
}

// requireSameView checks that reader sees what writer has: the same
// segments, start and end, and the same records at a few offsets.
func requireSameView(t *testing.T, writer, reader *Log, rng *rand.Rand) {
	t.Helper()
	require.Equal(t, writer.StartOffset(), reader.StartOffset(), "start")
	require.Equal(t, writer.EndOffset(), reader.EndOffset(), "end")
	ws, rs := writer.Segments(), reader.Segments()
	require.Len(t, rs, len(ws))
	for i := range ws {
		require.Equal(t, ws[i].Base, rs[i].Base)
		require.Equal(t, ws[i].Next, rs[i].Next, "segment %d", ws[i].Base)
		require.Equal(t, ws[i].Sealed, rs[i].Sealed, "segment %d", ws[i].Base)
		require.Equal(t, ws[i].FooterCRC, rs[i].FooterCRC, "segment %d", ws[i].Base)
	}
	start, end := writer.StartOffset(), writer.EndOffset()
	for range 5 {
		if end == start {
			break
		}
		off := start + rng.Uint64N(end-start)
		want, err := writer.Read(off, nil)
		require.NoError(t, err)
		got, err := reader.Read(off, nil)
		require.NoError(t, err, "offset %d", off)
		require.Equal(t, want, got, "offset %d", off)
	}
}

// TestRefreshFollowsWriter: a read-only log refreshed at random points
// of a writer's appends, rolls and front truncations sees exactly what
// the writer has each time, and a Refresh with nothing new reports no
// change. SEGSTORE_LONG=1 runs 300 seeds.
func TestRefreshFollowsWriter(t *testing.T) {
	for _, seed := range testutil.Seeds(t, 3, 300) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) { followWriter(t, seed) })
	}
}

func followWriter(t *testing.T, seed uint64) {
	writer, reader := besideWriter(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	changed, err := reader.Refresh()
	require.NoError(t, err)
	assert.False(t, changed, "nothing written yet")

	seen := map[uint64]bool{} // segments the reader saw
	for step := range 300 {
		switch op := rng.IntN(20); {
		case op == 0:
			require.NoError(t, writer.Roll())
		case op == 1 && writer.EndOffset() > writer.StartOffset():
			start, end := writer.StartOffset(), writer.EndOffset()
			require.NoError(t, writer.TruncateFront(start+rng.Uint64N(end-start)))
		default:
			batch := make([][]byte, 1+rng.IntN(20))
			for i := range batch {
				batch[i] = fmt.Appendf(nil, "step %d record %d %s", step, i, make([]byte, rng.IntN(400)))
			}
			_, err := writer.Append(batch...)
			require.NoError(t, err)
		}
		if rng.IntN(3) > 0 {
			continue // let changes pile up between looks
		}
		_, err := reader.Refresh()
		require.NoError(t, err, "step %d", step)
		requireSameView(t, writer, reader, rng)
		for _, s := range reader.Segments() {
			seen[s.Base] = true
		}
		changed, err := reader.Refresh()
		require.NoError(t, err)
		require.False(t, changed, "step %d: nothing new", step)
	}
	require.Greater(t, len(seen), 5, "the reader followed the writer across segments")
	require.Positive(t, writer.StartOffset(), "and across front truncations")
}

// TestRefreshWakesWait: a reader waiting for an offset returns once a
// Refresh has seen it written.
func TestRefreshWakesWait(t *testing.T) {
	writer, reader := besideWriter(t)
	waited := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		waited <- reader.Wait(ctx, 0)
	}()
	_, err := writer.Append([]byte("wake up"))
	require.NoError(t, err)
	changed, err := reader.Refresh()
	require.NoError(t, err)
	assert.True(t, changed)
	require.NoError(t, <-waited)
	rec, err := reader.Read(0, nil)
	require.NoError(t, err)
	assert.Equal(t, "wake up", string(rec))
}

// TestRefreshAfterTruncateBack: a reader of a log whose end the writer
// rewrote is told to reopen, whether the rewrite cut inside the last
// segment or removed whole segments.
func TestRefreshAfterTruncateBack(t *testing.T) {
	for _, where := range []string{"inside the active segment", "at a segment base"} {
		t.Run(where, func(t *testing.T) {
			path := t.TempDir()
			writer := realLog(t, path)
			defer writer.Close()
			fillSegments(t, writer, 2)
			reader := readerOf(t, path)
			from := writer.EndOffset() - 3
			if where == "at a segment base" {
				from = writer.Segments()[1].Base
			}
			require.NoError(t, writer.TruncateBack(from))
			_, err := writer.Append([]byte("a different record"))
			require.NoError(t, err)
			_, err = reader.Refresh()
			require.ErrorIs(t, err, ErrRewritten)
			assert.ErrorContains(t, err, "reopen")
		})
	}
}

func TestRefreshIsForReaders(t *testing.T) {
	writer := realLog(t, t.TempDir())
	defer writer.Close()
	_, err := writer.Refresh()
	assert.ErrorContains(t, err, "read-only")
}

// TestRefreshBesideLiveAppends: refreshes racing a writer's appends and
// rolls never fail, never go back, and every record seen is the one
// written at its offset.
func TestRefreshBesideLiveAppends(t *testing.T) {
	writer, reader := besideWriter(t)
	const total = 20000
	done := make(chan error, 1)
	go func() {
		for writer.EndOffset() < total {
			off := writer.EndOffset()
			batch := make([][]byte, 50)
			for i := range batch {
				batch[i] = fmt.Appendf(nil, "record %d %0300d", off+uint64(i), 0)
			}
			if _, err := writer.Append(batch...); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	var last uint64
	rng := rand.New(rand.NewPCG(1, 2))
	for last < total {
		_, err := reader.Refresh()
		require.NoError(t, err)
		end := reader.EndOffset()
		require.GreaterOrEqual(t, end, last, "the end never goes back")
		require.LessOrEqual(t, end, writer.DurableOffset(), "nothing is seen before the writer acknowledges it")
		last = end
		if end == 0 {
			continue
		}
		for _, off := range []uint64{end - 1, rng.Uint64N(end)} {
			got, err := reader.Read(off, nil)
			require.NoError(t, err, "offset %d", off)
			require.Equal(t, fmt.Sprintf("record %d %0300d", off, 0), string(got))
		}
	}
	require.NoError(t, <-done)
	require.Greater(t, len(reader.Segments()), 5, "the reader followed rolls")
}

// TestRefreshAfterQuiet: with no live writer, once the active segment
// has been quiet for a while, looks skip reading it; what a writer that
// comes and goes appends is still seen.
func TestRefreshAfterQuiet(t *testing.T) {
	path := t.TempDir()
	writer := realLog(t, path)
	_, err := writer.Append([]byte("first"))
	require.NoError(t, err)
	require.NoError(t, writer.Close())
	reader := readerOf(t, path)
	time.Sleep(quietFor + 100*time.Millisecond)
	for range 2 { // the first look reads the file and notes when
		_, err = reader.Refresh()
		require.NoError(t, err)
	}
	segs := *reader.segs.Load()
	active := segs[len(segs)-1]
	looked := active.looked
	_, err = reader.Refresh()
	require.NoError(t, err)
	assert.Equal(t, looked, active.looked, "a quiet file is not read again")
	require.Equal(t, uint64(1), reader.EndOffset())

	writer = realLog(t, path)
	_, err = writer.Append([]byte("second"))
	require.NoError(t, err)
	require.NoError(t, writer.Close())
	changed, err := reader.Refresh()
	require.NoError(t, err)
	assert.True(t, changed)
	rec, err := reader.Read(1, nil)
	require.NoError(t, err)
	assert.Equal(t, "second", string(rec))
}

// TestKeepRefreshed: with polling set to an hour, a reader still sees the
// writer's appends and new segments at once (inotify), and stops with
// ErrRewritten after a TruncateBack.
func TestKeepRefreshed(t *testing.T) {
	writer, reader := besideWriter(t)
	kept := make(chan error, 1)
	go func() { kept <- reader.KeepRefreshed(context.Background(), time.Hour) }()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for range 3 {
		_, err := writer.Append([]byte("one"))
		require.NoError(t, err)
		require.NoError(t, reader.Wait(ctx, writer.EndOffset()-1), "woken by the write, not by the hourly poll")
		require.NoError(t, writer.Roll())
	}
	fillSegments(t, writer, 6) // and rolls of its own
	require.NoError(t, reader.Wait(ctx, writer.EndOffset()-1))
	require.NoError(t, writer.TruncateBack(writer.EndOffset()-5))
	select {
	case err := <-kept:
		require.ErrorIs(t, err, ErrRewritten)
	case <-ctx.Done():
		t.Fatal("KeepRefreshed did not see the rewrite")
	}
}

// TestReaderSeesOnlyAcknowledged: a read-only log shows no record past
// what a live writer has published as acknowledged (DURABLE); once no
// writer holds the lock, what a dead one last published no longer hides
// the frames on disk.
func TestReaderSeesOnlyAcknowledged(t *testing.T) {
	path := t.TempDir()
	writer := realLog(t, path)
	_, err := writer.Append([]byte("a"), []byte("b"), []byte("c"))
	require.NoError(t, err)
	require.NoError(t, writer.Close())
	// As a writer that died having acknowledged nothing would leave it.
	d, err := createDurable(osDir(t, path))
	require.NoError(t, err)
	d.publish(0, position{pos: wal.DataStart, off: 0})
	d.close(false)

	noWriter := readerOf(t, path)
	assert.Equal(t, uint64(3), noWriter.EndOffset(), "no live writer: everything on disk")
	assert.Equal(t, WriterInfo{}, noWriter.Writer())

	dir, err := blockdev.OpenDir(path, false)
	require.NoError(t, err)
	unlock, err := dir.Lock(lockName) // a live writer that has acknowledged nothing
	require.NoError(t, err)
	reader := readerOf(t, path)
	assert.Equal(t, uint64(0), reader.EndOffset(), "nothing acknowledged is shown")
	assert.Equal(t, WriterInfo{Live: true, Acknowledged: 0, Published: true}, reader.Writer())
	_, err = reader.Read(0, nil)
	require.ErrorIs(t, err, ErrOutOfRange)

	require.NoError(t, unlock())
	changed, err := reader.Refresh()
	require.NoError(t, err)
	assert.True(t, changed)
	assert.Equal(t, uint64(3), reader.EndOffset(), "the writer is gone: what it wrote is the log's")
}

// TestWriterWithoutDurableFile: a writer that cannot make its DURABLE
// file still opens and appends; a reader beside it shows none of its
// active segment (nothing says what is acknowledged), and all of it once
// the writer is gone.
func TestWriterWithoutDurableFile(t *testing.T) {
	path := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(path, durableName), 0o755))
	writer, err := Open(path, realOptions())
	require.NoError(t, err)
	_, err = writer.Append([]byte("a"), []byte("b"))
	require.NoError(t, err)
	reader := readerOf(t, path)
	assert.Equal(t, WriterInfo{Live: true}, reader.Writer())
	assert.Equal(t, uint64(0), reader.EndOffset(), "a live writer that publishes nothing: none of its active segment")
	require.NoError(t, writer.Close())
	_, err = reader.Refresh()
	require.NoError(t, err)
	assert.Equal(t, uint64(2), reader.EndOffset())
}

// TestWriterInfo: a reader beside a live writer reports it and how far it
// has acknowledged appends, as the writer itself does.
func TestWriterInfo(t *testing.T) {
	writer, reader := besideWriter(t)
	_, err := writer.Append([]byte("a"), []byte("b"), []byte("c"))
	require.NoError(t, err)
	want := WriterInfo{Live: true, Acknowledged: 3, Published: true}
	assert.Equal(t, want, writer.Writer())
	assert.Equal(t, want, reader.Writer())
	require.NoError(t, writer.Close())
	assert.Equal(t, WriterInfo{}, reader.Writer(), "closed: no writer")
}

// TestWriterDuringClose: Writer() on a writer while Close runs reports
// the writer as it was before Close began or, once Close has begun, no
// writer (go test -race reported its unlocked read of the DURABLE file
// that Close clears).
func TestWriterDuringClose(t *testing.T) {
	open := WriterInfo{Live: true, Acknowledged: 1, Published: true}
	for range 20 {
		writer, err := Open(t.TempDir(), realOptions())
		require.NoError(t, err)
		_, err = writer.Append([]byte("a"))
		require.NoError(t, err)
		require.Equal(t, open, writer.Writer())
		done := make(chan WriterInfo)
		go func() { done <- writer.Writer() }()
		require.NoError(t, writer.Close())
		assert.Contains(t, []WriterInfo{open, {}}, <-done)
		assert.Equal(t, WriterInfo{}, writer.Writer(), "closed: it holds the lock no more")
	}
}

// holdDurableMidUpdate maps path's DURABLE file as a second writer would
// and leaves its sequence counter odd, as a writer preempted (or stopped)
// in the middle of publishing leaves it; the returned function makes it
// even again.
func holdDurableMidUpdate(t *testing.T, path string) (release func()) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(path, durableName), os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	mem, err := blockdev.Map(f, durableSize, true)
	require.NoError(t, err)
	t.Cleanup(func() { blockdev.Unmap(mem) })
	d := &durableFile{mem: mem}
	d.word(durSeq).Add(1)
	return func() { d.word(durSeq).Add(1) }
}

// TestReaderFailsClosedOnDurableMidUpdate: while a live writer's DURABLE
// words stay mid-update (its counter odd through every try), a reader
// knows nothing of what is acknowledged: a Refresh shows no more than
// before, a new reader none of the active segment, and Writer reports
// nothing published; once the words are readable again, the reader
// catches up.
func TestReaderFailsClosedOnDurableMidUpdate(t *testing.T) {
	writer, reader := besideWriter(t)
	_, err := writer.Append([]byte("a"), []byte("b"), []byte("c"))
	require.NoError(t, err)
	_, err = reader.Refresh()
	require.NoError(t, err)
	require.Equal(t, uint64(3), reader.EndOffset())

	release := holdDurableMidUpdate(t, writer.Dir())
	_, err = writer.Append([]byte("d"), []byte("e")) // its publishes keep the counter odd
	require.NoError(t, err)
	changed, err := reader.Refresh()
	require.NoError(t, err)
	assert.False(t, changed)
	assert.Equal(t, uint64(3), reader.EndOffset(), "a refresh that cannot read DURABLE shows nothing new")
	fresh := readerOf(t, writer.Dir())
	assert.Equal(t, uint64(0), fresh.EndOffset(), "a reader that cannot read DURABLE shows none of the active segment")
	assert.Equal(t, WriterInfo{Live: true}, fresh.Writer())
	rep, err := Verify(writer.Dir(), VerifyOptions{})
	require.NoError(t, err)
	assert.True(t, rep.LiveWriter)

	release()
	for _, r := range []*Log{reader, fresh} {
		changed, err := r.Refresh()
		require.NoError(t, err)
		assert.True(t, changed)
		assert.Equal(t, uint64(5), r.EndOffset())
	}
}

// TestWriterOpensBesideProbingReaders: readers asking whether a writer is
// live (the probe itself, Refresh, Writer) while a writer opens and closes
// the log 30 times never make an open fail: the probe queries the lock
// without taking it (with one that took it, shared and briefly, about
// one run in four of this test saw an open refused; blockdev's
// TestLockQueriesNeverRefuseALock is the sharper check of the lock).
func TestWriterOpensBesideProbingReaders(t *testing.T) {
	path := t.TempDir()
	opts := realOptions()
	opts.NoPreallocate = true // the opens, not the zeroing, are under test
	l, err := Open(path, opts)
	require.NoError(t, err)
	_, err = l.Append([]byte("a"))
	require.NoError(t, err)
	require.NoError(t, l.Close())
	reader := readerOf(t, path)
	stop := make(chan struct{})
	const probers = 3
	probeErrs := make(chan error, probers)
	for i := range probers {
		go func() {
			for {
				select {
				case <-stop:
					probeErrs <- nil
					return
				default:
				}
				var err error
				switch i {
				case 0:
					_, err = reader.Refresh()
					reader.Writer()
				default: // the probe alone, as often as it can run
					writerLive(reader.caps)
				}
				if err != nil {
					probeErrs <- err
					return
				}
			}
		}()
	}
	refused := 0
	for range 30 {
		w, err := Open(path, opts)
		if errors.Is(err, blockdev.ErrLocked) {
			refused++
			continue
		}
		require.NoError(t, err)
		require.True(t, writerLive(w.caps))
		require.NoError(t, w.Close())
	}
	close(stop)
	for range probers {
		require.NoError(t, <-probeErrs)
	}
	assert.Zero(t, refused, "writer opens refused while only readers probed")
}

// TestSecondWriterIsToldWhoHoldsTheLock: a second writer's open is
// refused with ErrLocked, naming the lock file, the process holding it
// and what to do.
func TestSecondWriterIsToldWhoHoldsTheLock(t *testing.T) {
	path := t.TempDir()
	writer := realLog(t, path)
	defer writer.Close()
	_, err := Open(path, realOptions())
	require.ErrorIs(t, err, blockdev.ErrLocked)
	assert.ErrorContains(t, err, filepath.Join(path, lockName))
	assert.ErrorContains(t, err, fmt.Sprintf("process %d", os.Getpid()))
	assert.ErrorContains(t, err, "close it first")
}
