// Package raftstore is a hashicorp/raft LogStore and StableStore on a
// segstore log: raft entries are records of an engine.Log (one durable
// commit per StoreLogs batch, point reads through segstore's cache), and
// the stable store is a small wal file of key-value records, one append
// and one fdatasync per Set.
package raftstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/segstore/segstore/blockdev"
	"github.com/segstore/segstore/engine"
	"github.com/segstore/segstore/wal"
)

// Store implements raft.LogStore, raft.StableStore and
// raft.MonotonicLogStore. Safe for concurrent use.
type Store struct {
	log *engine.Log
	dir blockdev.Dir

	mu     sync.Mutex    // serializes changes (StoreLogs, DeleteRange, Set)
	base   atomic.Uint64 // raft index = offset + base; changed under mu
	stable map[string][]byte
	stw    *wal.Writer // appends to the stable file
	stdev  blockdev.Device
}

var (
	_ raft.LogStore          = (*Store)(nil)
	_ raft.StableStore       = (*Store)(nil)
	_ raft.MonotonicLogStore = (*Store)(nil)
)

// errNotFound is what raft expects from a StableStore for a missing key:
// it compares the message, "not found".
var errNotFound = errors.New("not found")

// baseKey holds the index base in the stable store's file.
const baseKey = "\x00segstore/index-base"

// Open opens (creating if needed) a store in dir. opts configures the
// log as it does engine.Open, field for field (engine.Options{} is the
// engine's defaults: durable appends); opts.Dir, if set, replaces the
// directory (tests), for the stable file too. A raft store must be
// writable: opts.ReadOnly is refused (open the directory with
// engine.Open to read the log). Its appends must be durable and readable
// when StoreLogs returns (raft answers a leader, and reads the entries
// back, as soon as they are stored; the log shows records once they are
// durable): a SyncMode other than SyncAlways is refused.
func Open(dir string, opts engine.Options) (*Store, error) {
	if opts.ReadOnly {
		return nil, fmt.Errorf("raftstore: opening %s: Options.ReadOnly is not supported (raft writes its log and stable store): leave it false, or read the log with engine.Open", dir)
	}
	if opts.SyncMode != engine.SyncAlways {
		return nil, fmt.Errorf("raftstore: opening %s: Options.SyncMode %v is not supported: raft needs every stored entry durable and readable when StoreLogs returns, which only SyncAlways (the default) gives; leave SyncMode unset", dir, opts.SyncMode)
	}
	l, err := engine.Open(dir, opts) // takes the directory's lock
	if err != nil {
		return nil, err
	}
	d := opts.Dir
	if d == nil {
		if d, err = blockdev.OpenDir(dir, opts.Buffered); err != nil {
			l.Close()
			return nil, err
		}
	}
	s := &Store{log: l, dir: d}
	if s.stable, s.stw, s.stdev, err = openStable(d); err != nil {
		l.Close()
		return nil, err
	}
	if b, ok := s.stable[baseKey]; ok && len(b) == 8 {
		s.base.Store(binary.LittleEndian.Uint64(b))
	}
	return s, nil
}

// Log is the underlying segstore log (for its Stats, Segments, ...).
func (s *Store) Log() *engine.Log { return s.log }

// Close closes the log and the stable file.
func (s *Store) Close() error {
	return errors.Join(s.stw.Close(), s.stdev.Close(), s.log.Close())
}

// IsMonotonic: entries are dense, there are never gaps.
func (s *Store) IsMonotonic() bool { return true }

// FirstIndex is the first index stored, or 0 if none (O(1)).
func (s *Store) FirstIndex() (uint64, error) {
	start, end := s.log.StartOffset(), s.log.DurableOffset()
	if start >= end {
		return 0, nil
	}
	return start + s.loadBase(), nil
}

// LastIndex is the last index stored, or 0 if none (O(1)).
func (s *Store) LastIndex() (uint64, error) {
	start, end := s.log.StartOffset(), s.log.DurableOffset()
	if start >= end {
		return 0, nil
	}
	return end - 1 + s.loadBase(), nil
}

func (s *Store) loadBase() uint64 { return s.base.Load() }

// GetLog reads the entry at index, or raft.ErrLogNotFound.
func (s *Store) GetLog(index uint64, out *raft.Log) error {
	base := s.loadBase()
	if index < base {
		return raft.ErrLogNotFound
	}
	rec, err := s.log.Read(index-base, nil)
	if errors.Is(err, engine.ErrOutOfRange) {
		return raft.ErrLogNotFound
	}
	if err != nil {
		return err
	}
	if err := decodeEntry(rec, out); err != nil {
		return fmt.Errorf("raftstore: entry %d: %w", index, err)
	}
	if out.Index != index {
		return fmt.Errorf("%w: raftstore: the record read for index %d holds index %d: the index base in %s does not match the log (store left as is)",
			engine.ErrCorrupt, index, out.Index, stableName)
	}
	return nil
}

// StoreLog stores one entry.
func (s *Store) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }

// StoreLogs stores entries, which must continue the log (or start it
// anywhere, if it is empty) with consecutive indexes, in one durable
// commit: after a crash either all of them are there or none.
func (s *Store) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 1; i < len(logs); i++ {
		if logs[i].Index != logs[i-1].Index+1 {
			return fmt.Errorf("raftstore: StoreLogs with index %d after %d: entries must be consecutive", logs[i].Index, logs[i-1].Index)
		}
	}
	end := s.log.EndOffset()
	if s.log.StartOffset() == end { // empty: the first entry sets the base
		if logs[0].Index < end {
			return fmt.Errorf("raftstore: index %d is below the log's next offset %d", logs[0].Index, end)
		}
		if base := logs[0].Index - end; base != s.base.Load() {
			if err := s.setLocked(baseKey, binary.LittleEndian.AppendUint64(nil, base)); err != nil {
				return err
			}
			s.base.Store(base)
		}
	} else if want := end + s.base.Load(); logs[0].Index != want {
		return fmt.Errorf("raftstore: StoreLogs starting at index %d, the next index is %d (delete the conflicting suffix first)", logs[0].Index, want)
	}
	size := 0
	for _, l := range logs {
		size += entrySize(l)
	}
	// One allocation for the batch. The entries' data is copied here and
	// once more into the writer's aligned buffer: an Append record is one
	// contiguous slice, and the entry's header, data and extensions are
	// three (a gathered-record Append would save this copy).
	buf := make([]byte, 0, size)
	recs := make([][]byte, len(logs))
	for i, l := range logs {
		start := len(buf)
		buf = appendEntry(buf, l)
		recs[i] = buf[start:len(buf):len(buf)]
	}
	_, err := s.log.Append(recs...)
	return err
}

// DeleteRange deletes the entries [min, max]: a prefix (after a snapshot,
// TruncateFront) or a suffix (a conflicting tail, TruncateBack), or all.
// Deleting from the middle is an error: the log has no gaps.
func (s *Store) DeleteRange(min, max uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	start, end := s.log.StartOffset(), s.log.EndOffset()
	if start == end || max < min {
		return nil
	}
	base := s.base.Load()
	first, last := start+base, end-1+base
	lo, hi := min, max
	if lo < first {
		lo = first
	}
	if hi > last {
		hi = last
	}
	switch {
	case lo > hi:
		return nil // nothing stored in the range
	case lo == first && hi == last:
		return s.log.TruncateBack(start)
	case lo == first:
		return s.log.TruncateFront(hi + 1 - base)
	case hi == last:
		return s.log.TruncateBack(lo - base)
	}
	return fmt.Errorf("raftstore: DeleteRange(%d, %d) is inside the log [%d, %d]: only a prefix or a suffix can be deleted", min, max, first, last)
}

// Set stores a value durably (the whole stable file is replaced).
func (s *Store) Set(key []byte, val []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setLocked(string(key), append([]byte(nil), val...))
}

// Get returns a value, or an error "not found".
func (s *Store) Get(key []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.stable[string(key)]
	if !ok {
		return nil, errNotFound
	}
	return append([]byte(nil), v...), nil
}

// SetUint64 stores a number.
func (s *Store) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.LittleEndian.AppendUint64(nil, val))
}

// GetUint64 returns a number, or 0 and "not found".
func (s *Store) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raftstore: value of %q is %d bytes, not a uint64", key, len(v))
	}
	return binary.LittleEndian.Uint64(v), nil
}

func (s *Store) setLocked(key string, val []byte) error {
	if _, err := s.stw.Append(encodeKV(key, val)); err != nil {
		return fmt.Errorf("raftstore: set %q: %w", key, err)
	}
	s.stable[key] = val
	if end, _ := s.stw.Durable(); end > stableCompactAt {
		return s.compactStableLocked()
	}
	return nil
}

// Entry encoding, little endian:
//
//	index u64 | term u64 | appendedAt i64 (unix ns) | type u8 | data len uvarint | data | extensions len uvarint | extensions

// entrySize bounds the size of l's encoding.
func entrySize(l *raft.Log) int {
	return 25 + 2*binary.MaxVarintLen64 + len(l.Data) + len(l.Extensions)
}

// appendEntry appends l's encoding to b.
func appendEntry(b []byte, l *raft.Log) []byte {
	b = binary.LittleEndian.AppendUint64(b, l.Index)
	b = binary.LittleEndian.AppendUint64(b, l.Term)
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(at))
	b = append(b, byte(l.Type))
	b = binary.AppendUvarint(b, uint64(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.AppendUvarint(b, uint64(len(l.Extensions)))
	return append(b, l.Extensions...)
}

func decodeEntry(b []byte, l *raft.Log) error {
	if len(b) < 25 {
		return io.ErrUnexpectedEOF
	}
	l.Index = binary.LittleEndian.Uint64(b)
	l.Term = binary.LittleEndian.Uint64(b[8:])
	l.AppendedAt = time.Time{}
	if at := int64(binary.LittleEndian.Uint64(b[16:])); at != 0 {
		l.AppendedAt = time.Unix(0, at)
	}
	l.Type = raft.LogType(b[24])
	rest := b[25:]
	var err error
	if l.Data, rest, err = cutBytes(rest); err != nil {
		return err
	}
	if l.Extensions, rest, err = cutBytes(rest); err != nil {
		return err
	}
	if len(rest) != 0 {
		return fmt.Errorf("%d bytes after the entry", len(rest))
	}
	return nil
}

// cutBytes reads a uvarint length and that many bytes, as a slice of b
// (GetLog decodes a record Read returned in a buffer of its own, which the
// entry then keeps).
func cutBytes(b []byte) ([]byte, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, nil, io.ErrUnexpectedEOF
	}
	if n == 0 {
		return nil, b[k:], nil
	}
	return b[k : k+int(n) : k+int(n)], b[k+int(n):], nil
}

// The stable store is a small wal file, RAFT-STABLE.wal, of records
// (key length u32 | key | value), the last record of a key winning: a Set
// is one append, one fdatasync, atomic by the frame checksum. Open
// replays it (a torn last record is cut, as for any wal file). When the
// file passes stableCompactAt, the current pairs are written to a new
// file (RAFT-STABLE.wal.tmp, synced, renamed over, directory synced).
const (
	stableName      = "RAFT-STABLE.wal"
	stableCompactAt = 1 << 20
)

func stableOptions() wal.Options {
	return wal.Options{SyncMode: wal.SyncAlways, MaxWrite: 256 << 10, Preallocate: stableCompactAt + (256 << 10), PreZero: true}
}

func encodeKV(k string, v []byte) []byte {
	b := binary.LittleEndian.AppendUint32(nil, uint32(len(k)))
	return append(append(b, k...), v...)
}

// openStable replays the stable file (creating it if missing) and returns
// its pairs and a writer appending to it.
func openStable(d blockdev.Dir) (map[string][]byte, *wal.Writer, blockdev.Device, error) {
	kv := map[string][]byte{}
	dev, err := d.Open(stableName, blockdev.Options{})
	if errors.Is(err, fs.ErrNotExist) {
		if dev, err = d.Open(stableName, blockdev.Options{Create: true}); err != nil {
			return nil, nil, nil, err
		}
		w, err := wal.Create(dev, 0, stableOptions())
		if err == nil {
			err = d.Sync()
		}
		if err != nil {
			dev.Close()
			return nil, nil, nil, err
		}
		return kv, w, dev, nil
	}
	if err != nil {
		return nil, nil, nil, err
	}
	w, _, err := wal.Open(dev, stableOptions()) // recovery: a torn last Set is cut
	if err == nil {
		err = replayStable(dev, kv)
	}
	if err != nil {
		if w != nil {
			w.Close()
		}
		dev.Close()
		return nil, nil, nil, fmt.Errorf("raftstore: %s: %w", filepath.Join(d.Path(), stableName), err)
	}
	return kv, w, dev, nil
}

func replayStable(dev blockdev.Device, kv map[string][]byte) error {
	sc, err := wal.NewScanner(dev)
	if err != nil {
		return err
	}
	for sc.Next() {
		var bad error
		wal.Records(sc.Header().Version, sc.Frame().Payload, func(_ int, rec []byte) bool {
			if len(rec) < 4 || int(binary.LittleEndian.Uint32(rec)) > len(rec)-4 {
				bad = fmt.Errorf("a malformed record in the frame at %d", sc.Frame().Pos)
				return false
			}
			n := int(binary.LittleEndian.Uint32(rec))
			kv[string(rec[4:4+n])] = append([]byte(nil), rec[4+n:]...)
			return true
		})
		if bad != nil {
			return bad
		}
	}
	return sc.Err()
}

// compactStableLocked writes kv to a new stable file and switches to it.
func (s *Store) compactStableLocked() error {
	tmp := stableName + ".tmp"
	_ = s.dir.Remove(tmp)
	dev, err := s.dir.Open(tmp, blockdev.Options{Create: true})
	if err != nil {
		return err
	}
	w, err := wal.Create(dev, 0, stableOptions())
	if err != nil {
		dev.Close()
		return err
	}
	var recs [][]byte
	for k, v := range s.stable {
		recs = append(recs, encodeKV(k, v))
	}
	if len(recs) > 0 {
		_, err = w.Append(recs...)
	}
	if err == nil {
		err = s.dir.Rename(tmp, stableName)
	}
	if err == nil {
		err = s.dir.Sync()
	}
	if err != nil {
		w.Close()
		dev.Close()
		return err
	}
	s.stw.Close()
	s.stdev.Close()
	s.stw, s.stdev = w, dev
	return nil
}
