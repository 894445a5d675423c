package engine

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path/filepath"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine/internal/layout"
)

// A metadata file holds one small record, written whole (its format is
// layout's: see layout.EncodeMeta).
//
// Commit point: write to NAME.tmp, fdatasync, rename to NAME, fsync the
// directory (here, or by the caller with syncDir false when it syncs the
// directory for its own change next). A crash before the rename leaves
// the old file (or none).
const (
	metaStart = layout.KindStart // START: the first retained offset (TruncateFront)
	startName = "START"
	tmpSuffix = ".tmp" // files being written; open removes leftovers
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func writeMeta(dir blockdev.Dir, name string, kind uint32, payload []byte, syncDir bool) error {
	tmp := name + tmpSuffix
	_ = dir.Remove(tmp) // a leftover of a crash
	dev, err := dir.Open(tmp, blockdev.Options{Create: true})
	if err != nil {
		return err
	}
	defer dev.Close()
	a := dev.Alignment()
	buf := a.Alloc(int(alignedbuf.AlignUp(int64(layout.MetaLen(len(payload))), int64(a.Block))))
	layout.EncodeMeta(buf, kind, payload)
	if _, err := dev.WriteAt(buf, 0); err != nil {
		return fmt.Errorf("engine: write %s: %w", tmp, err)
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("engine: write %s: %w", tmp, err)
	}
	if err := dir.Rename(tmp, name); err != nil || !syncDir {
		return err
	}
	return dir.Sync()
}

// readMeta returns the payload of a metadata file, fs.ErrNotExist if there
// is none, or a *CorruptionError.
func readMeta(dir blockdev.Dir, name string, kind uint32) ([]byte, error) {
	dev, err := dir.Open(name, blockdev.Options{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	size, err := dev.Size()
	if err != nil {
		return nil, err
	}
	a := dev.Alignment()
	buf := a.Alloc(int(alignedbuf.AlignUp(max(size, 1), int64(a.Offset))))
	if _, err := dev.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return decodeMeta(buf[:size], filepath.Join(dir.Path(), name), kind)
}

// decodeMeta returns the payload of the metadata file at path, whose bytes
// are b, or a *CorruptionError.
func decodeMeta(b []byte, path string, kind uint32) ([]byte, error) {
	p, err := layout.DecodeMeta(b, kind)
	if err != nil {
		return nil, &CorruptionError{File: path, Op: "open", Err: err}
	}
	return bytes.Clone(p), nil
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
