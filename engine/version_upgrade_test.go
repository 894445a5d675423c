package engine

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/wal"
)

// TestVersion3LogUpgraded: a log written by a build of format version 3
// (its sealed segments and its active one of version 3) is opened by this
// build, appended to, truncated back inside its version 3 active segment
// (rewritten in version 3), rolled (the new segment is of the current
// version) and then lost to a crash, in each crash mode. Every
// acknowledged record survives with its bytes, every version 3 file stays
// of version 3 without a high-water mark (a version 3 build reads one as
// damage), and only the new segments carry one.
func TestVersion3LogUpgraded(t *testing.T) {
	for _, cm := range []blockdev.CrashMode{blockdev.CrashDropUnsynced, blockdev.CrashTear, blockdev.CrashKeepAll} {
		t.Run(fmt.Sprint("crash mode ", cm), func(t *testing.T) {
			d := blockdev.NewSimDir(blockdev.SimOptions{Seed: uint64(cm) + 1})
			o := testOptions(d)
			want := map[uint64][]byte{}
			add := func(l *Log, n int, gen byte) {
				for range n {
					off := l.EndOffset()
					r := freshRecord(off, 700+int(off%5)*900, gen)
					got, err := l.Append(r)
					require.NoError(t, err)
					require.Equal(t, off, got)
					want[off] = r
				}
			}
			formatVersion = 3
			defer func() { formatVersion = 0 }()
			l, err := Open("sim", o)
			require.NoError(t, err)
			add(l, 120, 0)
			require.NoError(t, l.Roll())
			add(l, 60, 0)
			require.NoError(t, l.Close())
			formatVersion = 0

			l, err = Open("sim", o)
			require.NoError(t, err)
			add(l, 30, 1)
			end := l.EndOffset()
			require.NoError(t, l.TruncateBack(end-40))
			for off := end - 40; off < end; off++ {
				delete(want, off)
			}
			add(l, 50, 2)
			require.NoError(t, l.Roll())
			add(l, 70, 3)
			l.bg.Wait() // a roll these appends started is sealed: one unsealed segment
			segs := l.Segments()
			img := d.Crash(cm)
			_ = l.Close()

			l, err = Open("sim", testOptions(img))
			require.NoError(t, err)
			defer l.Close()
			for off, r := range want {
				got, err := l.Read(off, nil)
				require.NoError(t, err, "record %d", off)
				require.Equal(t, r, got, "record %d", off)
			}
			marked := 0
			for _, si := range segs {
				f := img.File(si.File)
				require.NotNil(t, f, si.File)
				b := f.Bytes()
				v := binary.LittleEndian.Uint32(b[8:12])
				mark := b[wal.HighWaterPos : wal.HighWaterPos+wal.HighWaterLen]
				if si.Base < 180 {
					require.EqualValues(t, 3, v, "%s keeps its version", si.File)
					require.Equal(t, make([]byte, wal.HighWaterLen), mark, "%s: a mark in a version 3 file", si.File)
				} else {
					require.EqualValues(t, wal.Version, v, "%s: a new segment", si.File)
					if !si.Sealed {
						marked++
						require.NotEqual(t, make([]byte, wal.HighWaterLen), mark, "%s: the active segment of the current version has a mark", si.File)
					}
				}
			}
			require.Equal(t, 1, marked)
		})
	}
}
