package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/segstore/segstore/blockdev"
)

// pageLog is the plain log anyone would write first: one file written
// through the page cache, write + fdatasync per batch, a CRC per record,
// and an in-memory index of record offsets rebuilt by a scan on open. It
// is the baseline a store has to beat to be worth its complexity.
//
// Each record is framed as
//
//	0        4        8            8+length
//	+--------+--------+------------+
//	| length | CRC-32C| payload    |
//	| u32 LE | u32 LE |            |
//	+--------+--------+------------+
//
// The CRC covers the payload. A payload is never empty, so that zeroed
// space (an all-zero header, whose CRC would match) is never a record. A scan stops at the first frame that is
// short or fails its CRC (a torn tail) and truncates the file there.
type pageLog struct {
	mu   sync.Mutex // guards f's end, offs and buf (appends); reads take it to read offs
	f    *os.File
	offs []int64 // offs[i] is the file offset of the frame of index i+1
	end  int64   // the file's length: where the next frame goes
	buf  []byte  // one batch's frames
}

const (
	pageLogFile   = "pagelog.dat"
	pageLogHeader = 8
	// pageLogMaxRecord bounds a length read from the file before it is
	// trusted to size a read.
	pageLogMaxRecord = 64 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendFrame appends rec's frame to dst.
func appendFrame(dst, rec []byte) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(rec)))
	dst = binary.LittleEndian.AppendUint32(dst, crc32.Checksum(rec, castagnoli))
	return append(dst, rec...)
}

// openPageLog opens (creating if need be) the log in dir and scans it.
func openPageLog(dir string) (*pageLog, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, pageLogFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	p := &pageLog{f: f}
	if err := p.scan(); err != nil {
		f.Close()
		return nil, fmt.Errorf("pagelog %s: %w", path, err)
	}
	return p, nil
}

// scan rebuilds offs from the file and cuts a torn tail.
func (p *pageLog) scan() error {
	r := bufio.NewReaderSize(io.NewSectionReader(p.f, 0, 1<<62), 1<<20)
	var hdr [pageLogHeader]byte
	var payload []byte
	var off int64
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			return err
		}
		n := binary.LittleEndian.Uint32(hdr[0:4])
		if n == 0 || n > pageLogMaxRecord {
			break // a length no record has: a zeroed, torn or garbage tail
		}
		if cap(payload) < int(n) {
			payload = make([]byte, n)
		}
		payload = payload[:n]
		if _, err := io.ReadFull(r, payload); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				break
			}
			return err
		}
		if crc32.Checksum(payload, castagnoli) != binary.LittleEndian.Uint32(hdr[4:8]) {
			break
		}
		p.offs = append(p.offs, off)
		off += pageLogHeader + int64(n)
	}
	st, err := p.f.Stat()
	if err != nil {
		return err
	}
	if st.Size() != off {
		if err := p.f.Truncate(off); err != nil {
			return fmt.Errorf("cutting the torn tail at offset %d: %w", off, err)
		}
		if err := blockdev.Datasync(p.f); err != nil {
			return fmt.Errorf("syncing after cutting the torn tail at offset %d: %w", off, err)
		}
	}
	p.end = off
	return nil
}

func (p *pageLog) Append(batch [][]byte) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	buf := p.buf[:0]
	start := len(p.offs)
	pos := p.end
	for _, rec := range batch {
		if len(rec) == 0 || len(rec) > pageLogMaxRecord {
			p.offs = p.offs[:start]
			return 0, fmt.Errorf("pagelog: a record of %d bytes: records are 1 byte to %d bytes", len(rec), pageLogMaxRecord)
		}
		buf = appendFrame(buf, rec)
		p.offs = append(p.offs, pos)
		pos += pageLogHeader + int64(len(rec))
	}
	p.buf = buf
	if _, err := p.f.WriteAt(buf, p.end); err != nil {
		p.offs = p.offs[:start]
		return 0, err
	}
	if err := blockdev.Datasync(p.f); err != nil {
		p.offs = p.offs[:start]
		return 0, err
	}
	p.end = pos
	return uint64(start) + 1, nil
}

func (p *pageLog) Read(index uint64, dst []byte) ([]byte, error) {
	p.mu.Lock()
	n := uint64(len(p.offs))
	var off, next int64
	if index >= 1 && index <= n {
		off = p.offs[index-1]
		next = p.end
		if index < n {
			next = p.offs[index]
		}
	}
	p.mu.Unlock()
	if index < 1 || index > n {
		return dst, fmt.Errorf("pagelog: index %d is outside [1, %d]", index, n)
	}
	size := int(next - off)
	start := len(dst)
	dst = slices.Grow(dst, size)[:start+size]
	frame := dst[start:]
	if _, err := p.f.ReadAt(frame, off); err != nil {
		return dst[:start], fmt.Errorf("pagelog: reading index %d at offset %d: %w", index, off, err)
	}
	length := binary.LittleEndian.Uint32(frame[0:4])
	if int(length) != size-pageLogHeader {
		return dst[:start], fmt.Errorf("pagelog: index %d at offset %d: length %d, frame holds %d", index, off, length, size-pageLogHeader)
	}
	if crc32.Checksum(frame[pageLogHeader:], castagnoli) != binary.LittleEndian.Uint32(frame[4:8]) {
		return dst[:start], fmt.Errorf("pagelog: index %d at offset %d: CRC mismatch", index, off)
	}
	copy(frame, frame[pageLogHeader:])
	return dst[:len(dst)-pageLogHeader], nil
}

func (p *pageLog) First() (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.offs) == 0 {
		return 0, nil
	}
	return 1, nil
}

func (p *pageLog) Last() (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return uint64(len(p.offs)), nil
}

func (p *pageLog) Close() error { return p.f.Close() }
