package blockdev

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Dir is the seam for a directory of device files: the engine creates,
// lists, opens and removes segment files only through it. Creating or
// removing a name is durable only after Sync (the directory fsync), which is
// therefore the commit point of every create and remove.
//
// Names are base names inside the directory; a name with a path separator
// is refused. Methods are safe for concurrent use.
type Dir interface {
	// Open opens (or, with opts.Create, creates) the named file.
	Open(name string, opts Options) (Device, error)
	// Remove removes the named file. Open devices on it stay usable.
	Remove(name string) error
	// Rename renames a file (atomically replacing newName if it exists).
	Rename(oldName, newName string) error
	// List returns the names in the directory, sorted.
	List() ([]string, error)
	// Size returns the named file's size in bytes (a stat, no open).
	Size(name string) (int64, error)
	// Sync makes creates, removes and renames so far durable.
	Sync() error
	// Path names the directory in errors.
	Path() string
}

func checkName(dir, name string) error {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return fmt.Errorf("blockdev: %s: invalid file name %q", dir, name)
	}
	return nil
}

// asideMark is in the names of files that Remove and Rename moved aside
// on a platform that cannot remove a file in use (Windows, a mapped
// file): List never shows them, and a writer's Lock clears them.
const asideMark = ".segstore-aside-"

// OSDir is a Dir backed by a real directory.
type OSDir struct {
	path string
	// Buffered is forced on every Open (the explicit fallback, see Options).
	buffered bool
}

var _ Dir = (*OSDir)(nil)

// OpenDir returns the directory at path, creating it if needed, but not
// its parents: a path whose parent is missing is more likely a mistake
// than a place for a store. With buffered set, every file is opened with
// the buffered fallback.
func OpenDir(path string, buffered bool) (*OSDir, error) {
	err := os.Mkdir(path, 0o755)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("blockdev: creating %s: its parent directory does not exist: create it first (the store's own directory is created, its parents are not): %w", path, err)
	case err != nil && !errors.Is(err, fs.ErrExist):
		return nil, fmt.Errorf("blockdev: %w", err)
	}
	return statDir(path, buffered)
}

// OpenExistingDir returns the directory at path, which must exist: for a
// reader, which creates nothing. A missing one is an error wrapping
// fs.ErrNotExist.
func OpenExistingDir(path string, buffered bool) (*OSDir, error) {
	return statDir(path, buffered)
}

// statDir returns the OSDir at path after checking it is a directory.
func statDir(path string, buffered bool) (*OSDir, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("blockdev: %s is not an existing directory: check the path: %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("blockdev: %w", err)
	case !fi.IsDir():
		kind := "regular file"
		if !fi.Mode().IsRegular() {
			kind = fileKind(fi.Mode())
		}
		return nil, fmt.Errorf("blockdev: %s is a %s, not a directory", path, kind)
	}
	return &OSDir{path: path, buffered: buffered}, nil
}

func (d *OSDir) Open(name string, opts Options) (Device, error) {
	if err := checkName(d.path, name); err != nil {
		return nil, err
	}
	opts.Buffered = opts.Buffered || d.buffered
	return Open(filepath.Join(d.path, name), opts)
}

func (d *OSDir) Remove(name string) error {
	if err := checkName(d.path, name); err != nil {
		return err
	}
	if err := removeFile(filepath.Join(d.path, name)); err != nil {
		return fmt.Errorf("blockdev: %w", err)
	}
	return nil
}

func (d *OSDir) Rename(oldName, newName string) error {
	if err := errors.Join(checkName(d.path, oldName), checkName(d.path, newName)); err != nil {
		return err
	}
	if err := renameFile(filepath.Join(d.path, oldName), filepath.Join(d.path, newName)); err != nil {
		return fmt.Errorf("blockdev: %w", err)
	}
	return nil
}

func (d *OSDir) List() ([]string, error) {
	entries, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("blockdev: %w", err)
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if e.Type().IsRegular() && !strings.Contains(e.Name(), asideMark) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

func (d *OSDir) Size(name string) (int64, error) {
	if err := checkName(d.path, name); err != nil {
		return 0, err
	}
	fi, err := os.Stat(filepath.Join(d.path, name))
	if err != nil {
		return 0, fmt.Errorf("blockdev: %w", err)
	}
	return fi.Size(), nil
}

func (d *OSDir) Sync() error  { return SyncDir(d.path) }
func (d *OSDir) Path() string { return d.path }

// Lock takes an exclusive lock on the named file in the directory,
// creating it, so that two writers cannot write one store, and writes this
// process's id into the file (for the messages of those refused). It fails
// at once, with a *LockedError, if another open of the file holds it (in
// this process too). Release it with the returned function.
//
// The platform's lock (lockFile) belongs to this open of the file, is
// released when it closes (or the process dies), and conflicts with every
// other open of the file, in this process too.
func (d *OSDir) Lock(name string) (release func() error, err error) {
	if err := checkName(d.path, name); err != nil {
		return nil, err
	}
	path := filepath.Join(d.path, name)
	f, err := OpenRegular(path, os.O_RDWR|os.O_CREATE)
	if err != nil {
		return nil, fmt.Errorf("blockdev: lock: %w", err)
	}
	if held, err := lockFile(f); held || err != nil {
		defer f.Close()
		if held {
			pid := lockPID(f)
			return nil, &LockedError{Path: path, PID: pid, Command: processCommand(pid)}
		}
		return nil, fmt.Errorf("blockdev: lock %s: %w", path, err)
	}
	pid := strconv.Itoa(os.Getpid()) + "\n"
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(pid), 0)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("blockdev: lock %s: writing the holder's process id: %w", path, err)
	}
	cleanAside(d.path)
	return f.Close, nil
}

// LockHolder reports whether some open holds the named file's lock (see
// Lock), and the process id its holder wrote (0 if unknown). A missing
// file is not held; it creates nothing.
func (d *OSDir) LockHolder(name string) (held bool, pid int, err error) {
	if err := checkName(d.path, name); err != nil {
		return false, 0, err
	}
	path := filepath.Join(d.path, name)
	f, err := OpenRegular(path, os.O_RDONLY)
	if errors.Is(err, fs.ErrNotExist) {
		return false, 0, nil
	}
	if err != nil {
		return false, 0, fmt.Errorf("blockdev: lock query %s: %w", path, err)
	}
	defer f.Close()
	held, err = queryLock(f)
	if err != nil {
		return false, 0, fmt.Errorf("blockdev: lock query %s: %w", path, err)
	}
	if !held {
		return false, 0, nil
	}
	return true, lockPID(f), nil
}

// ErrNotRegular: a file the store keeps (LOCK, DURABLE) is something
// other than a regular file (a FIFO, a device, a directory); opening a
// FIFO to read it would wait for a writer forever.
var ErrNotRegular = errors.New("blockdev: not a regular file")

// fileKind names the type of a file that is not regular.
func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "FIFO"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeDevice != 0:
		return "device"
	case m.IsDir():
		return "directory"
	}
	return "special file (" + m.Type().String() + ")"
}

// lockPID reads the process id a lock's holder wrote into its file f; 0
// if there is none (being written, or not a number).
func lockPID(f *os.File) int {
	b := make([]byte, 33)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) || n > 32 {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// ErrLocked: another process holds the directory's lock.
var ErrLocked = errors.New("blockdev: directory in use")

// LockedError: Lock found the file locked by another open. It wraps
// ErrLocked.
type LockedError struct {
	Path string // the lock file
	PID  int    // the process id its holder wrote; 0 if unknown
	// Command is the holder's command line as /proc shows it (arguments
	// joined by spaces, cut at 200 bytes); "" if unknown.
	Command string
}

func (e *LockedError) Error() string {
	switch e.PID {
	case 0:
		return fmt.Sprintf("blockdev: %s is held by another writer (its process id is not recorded yet): stop that writer, or open the store read-only", e.Path)
	case os.Getpid():
		return fmt.Sprintf("blockdev: %s is held by this process (process %d), which already has the store open for writing: use that open, or close it first", e.Path, e.PID)
	}
	who := fmt.Sprintf("process %d", e.PID)
	if e.Command != "" {
		who += fmt.Sprintf(" (%s)", e.Command)
	}
	return fmt.Sprintf("blockdev: %s is held by %s, which has the store open for writing: stop it, or open the store read-only", e.Path, who)
}

// maxCommand bounds the command line a LockedError quotes.
const maxCommand = 200

// processCommand is the command line of process pid, from
// /proc/PID/cmdline, its arguments joined by spaces and cut at maxCommand
// bytes; "" if pid is 0 or the process is gone or hidden.
func processCommand(pid int) string {
	if pid <= 0 {
		return ""
	}
	f, err := os.Open(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	defer f.Close()
	b := make([]byte, maxCommand+1)
	n, _ := io.ReadFull(f, b)
	b, more := bytes.TrimRight(b[:n], "\x00"), ""
	if len(b) > maxCommand {
		b, more = b[:maxCommand], "…"
	}
	cmd := strings.ToValidUTF8(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})), "?") + more
	return cmd
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// SimDir is an in-memory Dir of Sim devices that models directory
// durability: a created, removed or renamed name is durable only after
// Sync. Crash returns the directory a power loss would leave.
type SimDir struct {
	mu      sync.Mutex
	opts    SimOptions
	files   map[string]*Sim // the names as they are now
	durable map[string]*Sim // the names as Sync last made them durable
	changes *simChanges     // shared with every file of the directory
	locks   map[string]bool // the Lock names held
}

var _ Dir = (*SimDir)(nil)

// NewSimDir returns an empty simulated directory whose files are Sims made
// with opts (each file gets opts.Name set to its name).
func NewSimDir(opts SimOptions) *SimDir {
	return &SimDir{opts: opts, files: map[string]*Sim{}, durable: map[string]*Sim{}, changes: &simChanges{limit: -1}}
}

// simChanges counts the changes made to a SimDir and its files, and stops
// them after a limit (StopAfter).
type simChanges struct {
	mu    sync.Mutex
	count int
	limit int      // -1: no limit
	ops   []string // "op name" of each change taken, in order
	// watches are the directory's Watch channels. A change wakes them
	// from enter, before it is made, but enter is called under the lock
	// that the change is made under (the directory's or the device's),
	// which every read of what it changes takes: a woken watcher sees it.
	watches map[*simWatch]bool
}

// simWatch is one Watch of a SimDir: ch is ready after a change, and
// after a read of one of the files named in reads.
type simWatch struct {
	ch    chan struct{}
	reads []string
}

func (w *simWatch) wake() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// enter counts one change of op on name, or refuses it once the limit is
// reached.
func (c *simChanges) enter(op, name string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.limit >= 0 && c.count >= c.limit {
		return fmt.Errorf("blockdev: %s %s: the directory stopped after %d changes: %w: %w", op, name, c.limit, ErrInjected, syscall.EIO)
	}
	c.count++
	c.ops = append(c.ops, op+" "+name)
	for w := range c.watches {
		w.wake()
	}
	return nil
}

// read wakes the watches that watch the reads of file name.
func (c *simChanges) read(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.watches {
		if slices.Contains(w.reads, name) {
			w.wake()
		}
	}
}

// Changes is how many changes the directory and its files have taken so
// far: device writes, syncs and size changes, and file creations,
// removals, renames and directory syncs.
func (d *SimDir) Changes() int {
	d.changes.mu.Lock()
	defer d.changes.mu.Unlock()
	return d.changes.count
}

// ChangesSince lists the changes taken after the first n (as Changes
// counts them), each as "op file" ("write sim:NAME", "sync sim:NAME" for
// a device, "sync sim" for the directory), in the order they were taken.
func (d *SimDir) ChangesSince(n int) []string {
	d.changes.mu.Lock()
	defer d.changes.mu.Unlock()
	return slices.Clone(d.changes.ops[min(n, len(d.changes.ops)):])
}

// StopAfter lets the directory and its files take n more changes (see
// Changes), then fails every later one with an injected EIO that says so:
// what a process that dies at that point leaves, once the directory is
// Crashed. Sweeping n over every step of an operation tests recovery from
// a crash at each one. A negative n removes the limit.
func (d *SimDir) StopAfter(n int) {
	d.changes.mu.Lock()
	defer d.changes.mu.Unlock()
	d.changes.limit = -1
	if n >= 0 {
		d.changes.limit = d.changes.count + n
	}
}

func (d *SimDir) Open(name string, opts Options) (Device, error) {
	if err := checkName("sim", name); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s, err := d.fileLocked("open", name, opts.Create, false)
	if err != nil {
		return nil, err
	}
	return s.handle(), nil
}

// fileLocked returns the Sim of name, creating it if create is set (op
// names the caller in errors); mapped says the caller is MapShared. d.mu
// must be held.
func (d *SimDir) fileLocked(op, name string, create, mapped bool) (*Sim, error) {
	if s, ok := d.files[name]; ok {
		return s, nil
	}
	if !create {
		return nil, fmt.Errorf("blockdev: %s sim:%s: %w", op, name, fs.ErrNotExist)
	}
	if err := d.changes.enter("create", "sim:"+name); err != nil {
		return nil, err
	}
	// A device's seed (its tearing) depends on how many devices the
	// directory holds, not on the mapped files beside them, so that a
	// DURABLE file leaves every device's tearing as it is without one.
	devices := 0
	for _, f := range d.files {
		if !f.mapOnly {
			devices++
		}
	}
	o := d.opts
	o.Name = name
	o.Seed = d.opts.Seed ^ uint64(devices+1)*0x9e3779b97f4a7c15
	s := NewSim(o)
	s.changes = d.changes
	s.mapOnly = mapped
	d.files[name] = s
	return s, nil
}

func (d *SimDir) Remove(name string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.files[name]; !ok {
		return fmt.Errorf("blockdev: remove sim:%s: %w", name, fs.ErrNotExist)
	}
	if err := d.changes.enter("remove", "sim:"+name); err != nil {
		return err
	}
	delete(d.files, name)
	return nil
}

func (d *SimDir) Rename(oldName, newName string) error {
	if err := errors.Join(checkName("sim", oldName), checkName("sim", newName)); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.files[oldName]
	if !ok {
		return fmt.Errorf("blockdev: rename sim:%s: %w", oldName, fs.ErrNotExist)
	}
	if err := d.changes.enter("rename", "sim:"+oldName); err != nil {
		return err
	}
	delete(d.files, oldName)
	d.files[newName] = s
	s.setName(newName) // as a descriptor open on it now resolves to the new name
	return nil
}

func (d *SimDir) List() ([]string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	names := make([]string, 0, len(d.files))
	for n := range d.files {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func (d *SimDir) Size(name string) (int64, error) {
	d.mu.Lock()
	s, ok := d.files[name]
	d.mu.Unlock()
	if !ok {
		return 0, fmt.Errorf("blockdev: stat sim:%s: %w", name, fs.ErrNotExist)
	}
	return s.Size()
}

func (d *SimDir) Sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.changes.enter("sync", "sim"); err != nil {
		return err
	}
	d.durable = make(map[string]*Sim, len(d.files))
	for n, s := range d.files {
		d.durable[n] = s
	}
	return nil
}

func (d *SimDir) Path() string { return "sim" }

// File returns the Sim behind a name, for fault injection.
func (d *SimDir) File(name string) *Sim {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.files[name]
}

// Crash simulates a power loss: the returned directory holds the names
// that were durable, each with the content its device keeps under mode.
// Every device of d fails from now on.
func (d *SimDir) Crash(mode CrashMode) *SimDir {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := NewSimDir(d.opts)
	images := map[*Sim][]byte{}
	for _, s := range d.files {
		images[s] = s.Crash(mode)
	}
	for n, s := range d.durable {
		img, ok := images[s]
		if !ok { // removed since the last Sync, but the removal was not durable
			img = s.Crash(mode)
		}
		o := d.opts
		o.Name = n
		out.files[n] = NewSimFrom(img, o)
		out.files[n].changes = out.changes
		out.durable[n] = out.files[n]
	}
	return out
}

// simHandle is one open of a SimDir file: closing it does not close the
// file for other handles.
type simHandle struct {
	*Sim
	closed atomic.Bool
}

func (s *Sim) handle() *simHandle { return &simHandle{Sim: s} }

func (h *simHandle) check(op string) error {
	if h.closed.Load() {
		return fmt.Errorf("blockdev: %s %s: %w", op, h.label(), os.ErrClosed)
	}
	return nil
}

func (h *simHandle) ReadAt(p []byte, off int64) (int, error) {
	if err := h.check("read"); err != nil {
		return 0, err
	}
	return h.Sim.ReadAt(p, off)
}

func (h *simHandle) WriteAt(p []byte, off int64) (int, error) {
	if err := h.check("write"); err != nil {
		return 0, err
	}
	return h.Sim.WriteAt(p, off)
}

func (h *simHandle) Sync() error {
	if err := h.check("sync"); err != nil {
		return err
	}
	return h.Sim.Sync()
}

func (h *simHandle) Allocate(off, n int64) error {
	if err := h.check("allocate"); err != nil {
		return err
	}
	return h.Sim.Allocate(off, n)
}

func (h *simHandle) Truncate(size int64) error {
	if err := h.check("truncate"); err != nil {
		return err
	}
	return h.Sim.Truncate(size)
}

func (h *simHandle) Close() error {
	if h.closed.Swap(true) {
		return fmt.Errorf("blockdev: close %s: %w", h.label(), os.ErrClosed)
	}
	return nil
}
