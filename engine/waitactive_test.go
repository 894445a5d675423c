package engine

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWaitActive: a wait at the active segment's durable end returns on
// each change of what the segment exports (an append, a seal, a cut) and
// not before; a base that is not the active segment returns at once.
func TestWaitActive(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Log) error
	}{
		{"append", func(l *Log) error { _, err := l.Append([]byte("new")); return err }},
		{"seal", func(l *Log) error { return l.Roll() }},
		{"truncate", func(l *Log) error { return l.TruncateBack(l.EndOffset() - 1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := realLog(t, t.TempDir())
			defer l.Close()
			_, err := l.Append([]byte("a"), []byte("b"))
			require.NoError(t, err)
			active := l.Segments()[0]
			ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
			assert.ErrorIs(t, l.WaitActive(ctx, active.Base, active.DataEnd), context.DeadlineExceeded, "nothing changed")
			cancel()
			ctx, cancel = context.WithTimeout(context.Background(), time.Minute) // a liveness bound
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- l.WaitActive(ctx, active.Base, active.DataEnd) }()
			require.NoError(t, tc.change(l))
			require.NoError(t, <-done)
			assert.NoError(t, l.WaitActive(ctx, active.Base+12345, 0), "no such segment")
		})
	}
}
