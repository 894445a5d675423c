package blockdev_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/blockdev/devicetest"
)

func openFile(t *testing.T, opts blockdev.Options) blockdev.Device {
	opts.Create = true
	d, err := blockdev.Open(filepath.Join(t.TempDir(), "dev"), opts)
	require.NoError(t, err)
	t.Cleanup(func() { d.Close() })
	return d
}

func TestConformance(t *testing.T) {
	t.Run("Direct", func(t *testing.T) {
		devicetest.Run(t, func(t *testing.T) blockdev.Device { return openFile(t, blockdev.Options{}) })
	})
	t.Run("Buffered", func(t *testing.T) {
		devicetest.Run(t, func(t *testing.T) blockdev.Device { return openFile(t, blockdev.Options{Buffered: true}) })
	})
	t.Run("Sim", func(t *testing.T) {
		devicetest.Run(t, func(t *testing.T) blockdev.Device { return blockdev.NewSim(blockdev.SimOptions{Seed: 1}) })
	})
	t.Run("SimLargeSectors", func(t *testing.T) {
		devicetest.Run(t, func(t *testing.T) blockdev.Device {
			return blockdev.NewSim(blockdev.SimOptions{Alignment: blockdev.Alignment{Memory: 4096, Offset: 4096, Block: 8192}})
		})
	})
}

func TestDirectFileReportsDiscoveredAlignment(t *testing.T) {
	d := openFile(t, blockdev.Options{}).(*blockdev.File)
	assert.True(t, d.Direct())
	a := d.Alignment()
	// On ext4 and xfs the kernel answers statx STATX_DIOALIGN.
	if fs := d.Filesystem(); fs == "ext4" || fs == "xfs" {
		assert.Equal(t, "statx", a.Source, "alignment %v on %s", a, fs)
	}
	assert.GreaterOrEqual(t, a.Offset, blockdev.SectorSize)
	assert.NotNil(t, d.File())
}

// The kernel itself must agree with the alignment we report: a write that our
// check lets through succeeds with O_DIRECT.
func TestDirectFileKernelAcceptsReportedAlignment(t *testing.T) {
	d := openFile(t, blockdev.Options{})
	a := d.Alignment()
	b := a.Alloc(a.Offset)
	_, err := d.WriteAt(b, int64(a.Offset))
	require.NoError(t, err)
}

func TestSyncDir(t *testing.T) {
	require.NoError(t, blockdev.SyncDir(t.TempDir()))
	assert.Error(t, blockdev.SyncDir(filepath.Join(t.TempDir(), "missing")))
}
