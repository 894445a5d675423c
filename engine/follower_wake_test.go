package engine

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFollowerSeesEveryAcknowledgedAppend: a read-only log in this process
// kept refreshed with polling set to an hour (so only the writer's wake-up
// bytes and its file events wake it) sees every append acknowledged by
// four concurrent appenders, across rolls: each appender waits on the
// follower for its own batch before it appends the next, so a publish
// whose wake-up byte was lost or written before its words leaves an
// appender waiting for the hourly poll. After the writer closes, the
// follower sees the whole log, the same bytes.
func TestFollowerSeesEveryAcknowledgedAppend(t *testing.T) {
	writer, reader := besideWriter(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute) // a wedge, not a speed
	defer cancel()
	kctx, kstop := context.WithCancel(ctx)
	kept := make(chan error, 1)
	go func() { kept <- reader.KeepRefreshed(kctx, time.Hour) }()
	const appenders, batches = 4, 150
	errs := make(chan error, appenders)
	var wg sync.WaitGroup
	for a := range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range batches {
				n := 1 + (a+i)%7
				recs := make([][]byte, n)
				for k := range recs {
					recs[k] = fmt.Appendf(nil, "appender %d batch %d record %d %0400d", a, i, k, 0)
				}
				first, err := writer.Append(recs...)
				if err != nil {
					errs <- err
					return
				}
				last := first + uint64(n) - 1
				if err := reader.Wait(ctx, last); err != nil {
					errs <- fmt.Errorf("the follower never saw offset %d (appender %d, batch %d; it sees up to %d): %w", last, a, i, reader.DurableOffset(), err)
					return
				}
				got, err := reader.Read(last, nil)
				if err != nil {
					errs <- err
					return
				}
				if string(got) != string(recs[n-1]) {
					errs <- fmt.Errorf("offset %d reads %.40q, want %.40q", last, got, recs[n-1])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Greater(t, len(writer.Segments()), 3, "the appends rolled")
	end := writer.EndOffset()
	require.NoError(t, writer.Close())
	require.NoError(t, reader.Wait(ctx, end-1))
	kstop()
	require.ErrorIs(t, <-kept, context.Canceled)
	for off := range end {
		_, err := reader.Read(off, nil)
		require.NoError(t, err, "offset %d", off)
	}
}

// TestCloseClosesTheWakeDescriptors: once a writer's Close returns, the
// DURABLE descriptors it wrote and read through are closed: no wake-up
// byte can land in, or be read from, whatever file reuses them.
func TestCloseClosesTheWakeDescriptors(t *testing.T) {
	path := t.TempDir()
	for range 3 {
		l := realLog(t, path)
		d := l.pub
		require.NotNil(t, d)
		_, err := l.Append([]byte("one"))
		require.NoError(t, err)
		require.NoError(t, l.Close())
		_, err = d.m.WriteAt([]byte{1}, durableWakeAt)
		require.ErrorIs(t, err, os.ErrClosed, "the DURABLE file is closed")
		_, err = d.m.ReadAt(make([]byte, 1), durableWakeAt)
		require.ErrorIs(t, err, os.ErrClosed, "the wake-up descriptor is closed")
	}
}
