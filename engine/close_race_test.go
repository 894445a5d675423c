package engine

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// closeRaceRounds is how many times each call is raced against Close: each
// round is a fresh writer and reader, so the call lands at a different
// step of Close.
const closeRaceRounds = 8

// TestDurableMappingDuringClose: every public method that reads the
// DURABLE mapping (the writer's, which Close unmaps and clears under
// durMu, and a read-only log's, which Close unmaps and clears under
// followed.mu) called over and over from two goroutines while Close runs,
// on the writer and on a read-only log beside it, with appends publishing
// on the writer meanwhile. Under go test -race this proves each read is
// ordered with Close's clearing; each call returns nil or ErrClosed (or,
// for Writer, the writer as it was or no writer). Writer read the
// writer's mapping without durMu before: this test reported that race.
func TestDurableMappingDuringClose(t *testing.T) {
	type call func(ctx context.Context, l *Log) error
	calls := []struct {
		name     string
		readOnly bool // called on the read-only log (else on the writer)
		call     call
	}{
		{"writer Writer", false, func(_ context.Context, l *Log) error { l.Writer(); return nil }},
		{"writer Stats", false, func(_ context.Context, l *Log) error { l.Stats(); return nil }},
		{"writer Append", false, func(_ context.Context, l *Log) error { _, err := l.Append([]byte("x")); return err }},
		{"writer Sync", false, func(_ context.Context, l *Log) error { return l.Sync() }},
		{"writer Roll", false, func(_ context.Context, l *Log) error { return l.Roll() }},
		{"writer Wait", false, func(ctx context.Context, l *Log) error { return l.Wait(ctx, l.EndOffset()) }},
		{"reader Writer", true, func(_ context.Context, l *Log) error { l.Writer(); return nil }},
		{"reader Refresh", true, func(_ context.Context, l *Log) error { _, err := l.Refresh(); return err }},
		{"reader KeepRefreshed", true, func(ctx context.Context, l *Log) error { return l.KeepRefreshed(ctx, time.Millisecond) }},
		{"reader Stats", true, func(_ context.Context, l *Log) error { l.Stats(); return nil }},
		{"reader Wait", true, func(ctx context.Context, l *Log) error { return l.Wait(ctx, l.EndOffset()) }},
	}
	for _, tc := range calls {
		t.Run(tc.name, func(t *testing.T) {
			for range closeRaceRounds {
				writer, reader := besideWriter(t)
				_, err := writer.Append([]byte("a"))
				require.NoError(t, err)
				_, err = reader.Refresh()
				require.NoError(t, err)
				target := writer
				if tc.readOnly {
					target = reader
				}
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				errs := make(chan error, 1024)
				loop := func(f func() error) {
					defer wg.Done()
					// Until the call reports the log closed, then once more.
					for i := 0; i < 1000; i++ {
						err := f()
						if errors.Is(err, ErrClosed) {
							errs <- f()
							return
						}
						if err != nil {
							errs <- err
							return
						}
					}
				}
				for range 2 {
					wg.Add(1)
					go loop(func() error {
						if err := tc.call(ctx, target); err != nil {
							return err
						}
						if target.closed() {
							return ErrClosed
						}
						return nil
					})
				}
				wg.Add(1)
				go loop(func() error { _, err := writer.Append([]byte("b")); return err }) // publishes as Close runs
				require.NoError(t, target.Close())
				if target == reader {
					require.NoError(t, writer.Close())
				}
				wg.Wait()
				cancel()
				close(errs)
				for err := range errs {
					assert.ErrorIs(t, err, ErrClosed)
				}
				assert.Equal(t, WriterInfo{}, writer.Writer(), "closed: it holds the lock no more")
				assert.Equal(t, WriterInfo{}, reader.Writer(), "no writer holds the lock")
			}
		})
	}
}
