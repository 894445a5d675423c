package engine

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// waitStarted returns once a Wait on l has taken the channel it sleeps on
// (it then wakes at the next notification).
func waitStarted(l *Log) {
	for {
		l.durMu.Lock()
		waited := l.durWaited
		l.durMu.Unlock()
		if waited {
			return
		}
		runtime.Gosched()
	}
}

// TestWaitReturnsWhenNothingMoreCanBeDurable sweeps the ways a log stops
// making records durable — Close, a failed fdatasync (in Append under
// SyncAlways, in the background flush under SyncNever), a failed roll —
// with the Wait started before or after the stop, for an offset already
// durable, the next one, and one far past the end: a durable offset
// returns nil; any other returns at once, with ErrClosed after Close and
// with the failure (not the context's deadline) after a failure. The
// context's deadline is a minute: only a Wait that is never woken reaches it.
func TestWaitReturnsWhenNothingMoreCanBeDurable(t *testing.T) {
	stops := []struct {
		name string
		want error // nil: the failure, whatever it says (not ErrClosed, not the deadline)
		do   func(t *testing.T, d *blockdev.SimDir, l *Log)
	}{
		{"close", ErrClosed, func(t *testing.T, d *blockdev.SimDir, l *Log) { require.NoError(t, l.Close()) }},
		{"failed-append", nil, func(t *testing.T, d *blockdev.SimDir, l *Log) {
			d.StopAfter(0)
			_, err := l.Append([]byte("lost"))
			require.Error(t, err)
		}},
		{"failed-flush", nil, func(t *testing.T, d *blockdev.SimDir, l *Log) {
			d.StopAfter(0)
			_, err := l.Append([]byte("lost")) // SyncNever: the background flush fails
			require.NoError(t, err)
			require.Error(t, l.Sync())
		}},
		{"failed-roll", nil, func(t *testing.T, d *blockdev.SimDir, l *Log) {
			d.StopAfter(0)
			require.Error(t, l.Roll())
		}},
	}
	for _, st := range stops {
		for _, during := range []bool{false, true} {
			for _, target := range []string{"durable", "next", "far"} {
				t.Run(fmt.Sprintf("%s/during=%v/%s", st.name, during, target), func(t *testing.T) {
					d := blockdev.NewSimDir(blockdev.SimOptions{})
					o := testOptions(d)
					if st.name == "failed-flush" {
						o.SyncMode = SyncNever
					}
					l, err := Open("sim", o)
					require.NoError(t, err)
					defer l.Close()
					appendN(t, l, 3)
					require.NoError(t, l.Sync())
					off := map[string]uint64{"durable": 1, "next": l.EndOffset(), "far": 1 << 40}[target]
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					res := make(chan error, 1)
					switch {
					case during && target == "durable":
						res <- l.Wait(ctx, off) // returns before the stop
						st.do(t, d, l)
					case during:
						go func() { res <- l.Wait(ctx, off) }()
						waitStarted(l)
						st.do(t, d, l)
					default:
						st.do(t, d, l)
						go func() { res <- l.Wait(ctx, off) }()
					}
					err = <-res
					switch {
					case target == "durable" && (during || st.want == nil):
						require.NoError(t, err, "offset %d was durable", off)
					case st.want != nil:
						require.ErrorIs(t, err, st.want)
					default:
						require.Error(t, err)
						require.False(t, errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrClosed), "the failure, not %v", err)
					}
				})
			}
		}
	}
}
