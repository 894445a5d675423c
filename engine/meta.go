package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"path/filepath"

	"github.com/segstore/segstore/alignedbuf"
	"github.com/segstore/segstore/blockdev"
)

// A metadata file holds one small record, written whole:
//
//	0        8        12       16              16+n     20+n
//	+--------+--------+--------+---------- - - -+--------+
//	| magic  | kind   | n      | payload (n)    | crc32c |  then zeros to the block
//	+--------+--------+--------+---------- - - -+--------+
//
// Commit point: write to NAME.tmp, fdatasync, rename to NAME, fsync the
// directory (here, or by the caller with syncDir false when it syncs the
// directory for its own change next). A crash before the rename leaves
// the old file (or none).
const (
	metaMagic  = "segmeta1"
	metaStart  = 1 // START: the first retained offset (TruncateFront)
	startName  = "START"
	tmpSuffix  = ".tmp" // files being written; open removes leftovers
	metaHeader = 16
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
	n := metaHeader + len(payload) + 4
	buf := a.Alloc(int(alignedbuf.AlignUp(int64(n), int64(a.Block))))
	copy(buf, metaMagic)
	binary.LittleEndian.PutUint32(buf[8:], kind)
	binary.LittleEndian.PutUint32(buf[12:], uint32(len(payload)))
	copy(buf[metaHeader:], payload)
	binary.LittleEndian.PutUint32(buf[n-4:], crc32.Checksum(buf[:n-4], castagnoli))
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
	bad := func(why string) error {
		return &CorruptionError{File: path, Op: "open", Err: errors.New(why)}
	}
	size := int64(len(b))
	if size < metaHeader+4 || string(b[:8]) != metaMagic {
		return nil, bad("not a segstore metadata file")
	}
	n := int64(binary.LittleEndian.Uint32(b[12:]))
	if binary.LittleEndian.Uint32(b[8:]) != kind || metaHeader+n+4 > size {
		return nil, bad("metadata of the wrong kind or length")
	}
	end := metaHeader + n
	if crc32.Checksum(b[:end], castagnoli) != binary.LittleEndian.Uint32(b[end:]) {
		return nil, bad("metadata checksum mismatch")
	}
	if len(bytes.Trim(b[end+4:], "\x00")) != 0 {
		return nil, bad("non-zero bytes after the metadata record (written as zeros)")
	}
	return append([]byte(nil), b[metaHeader:end]...), nil
}

func isNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
