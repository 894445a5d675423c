package engine

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
)

// TestCloseDuringReadAhead: readers in order (more of them than the log
// follows streams) run while Close runs, in segments of the current format
// and of version 2, with records around and past the read-ahead span.
// Every reader returns (none waits for good on a read-ahead that Close
// stopped), each read returns its own bytes or ErrClosed, and Close leaves
// no read-ahead goroutine, chunk or reservation.
func TestCloseDuringReadAhead(t *testing.T) {
	for _, v := range []uint32{0, 2} {
		for _, size := range []int{3000, 1<<20 + 100} {
			for _, after := range []int64{1, max(20, 200*3000/int64(size))} {
				t.Run(fmt.Sprintf("version=%d/size=%d/after=%d", v, size, after), func(t *testing.T) {
					formatVersion = v
					defer func() { formatVersion = 0 }()
					d := blockdev.NewSimDir(blockdev.SimOptions{})
					o := testOptions(d)
					o.SegmentSize, o.MaxWrite, o.CacheBytes = 8<<20, 2<<20, 64<<10
					l, err := Open("sim", o)
					require.NoError(t, err)
					n := max(8, 6<<20/size)
					step := max(1, 1<<20/size)
					// Each offset's record, made once: the readers compare against it.
					var want [][]byte
					for i := 0; i < n; i += step { // in batches: fewer fsyncs
						var recs [][]byte
						for j := i; j < min(n, i+step); j++ {
							recs = append(recs, freshRecord(uint64(j), size, 0))
						}
						_, err := l.Append(recs...)
						require.NoError(t, err)
						want = append(want, recs...)
					}
					var reads atomic.Int64
					var bad atomic.Value
					closing := make(chan struct{})
					var once sync.Once
					var wg sync.WaitGroup
					for r := 0; r < raStreams+1; r++ {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for off := uint64(r * n / (raStreams + 1)); ; off = (off + 1) % uint64(n) {
								got, err := l.Read(off, nil)
								if err != nil {
									if !errors.Is(err, ErrClosed) {
										bad.CompareAndSwap(nil, fmt.Sprintf("read %d: %v", off, err))
									}
									return
								}
								if string(got) != string(want[off]) {
									bad.CompareAndSwap(nil, fmt.Sprintf("read %d: wrong bytes", off))
									return
								}
								if reads.Add(1) == after {
									once.Do(func() { close(closing) })
								}
							}
						}()
					}
					<-closing
					require.NoError(t, l.Close())
					wg.Wait()
					if b := bad.Load(); b != nil {
						t.Fatal(b)
					}
					requireNoReadAhead(t, l)
					requireNoReservation(t, l)
				})
			}
		}
	}
}
