// Package queuetest holds a filesystem for tests of the queue and of its
// users (the SMTP server): it keeps apart what was fsynced from what was
// only written, so a test can simulate a power loss at any operation, and
// it can run out of space or fail any operation on demand.
package queuetest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// ErrCrashed is what every operation returns between a crash set with
// CrashAt and Reboot, and what files opened before any crash return.
var ErrCrashed = errors.New("queuetest: simulated crash")

// Op names a filesystem operation, for Fail hooks.
type Op struct {
	N    int    // its number, counting every operation since New from 1
	Kind string // open, read, write, sync, stat, close, rename, remove, readdir, syncdir, statfs, lock
	Name string // the file, "" for the directory
}

// Stats counts operations.
type Stats struct {
	Ops       int
	FileSyncs int
	DirSyncs  int
}

// FS is an in-memory queue.FS with a strict durability model: a file's
// content becomes durable when it is fsynced (File.Sync), the directory's
// names (which name points at which file) when the directory is
// (SyncDir). Crash reverts both to what was durable: files written but not
// fsynced lose those writes, names created, renamed or removed since the
// last directory fsync come back as they were. A file whose name was
// durable but whose content never was comes back empty.
type FS struct {
	mu      sync.Mutex
	names   map[string]*inode // the directory as the process sees it
	durable map[string]*inode // the directory as of the last SyncDir
	locks   map[string]bool
	gen     int // bumped at each crash; files of an older generation fail
	down    bool
	ops     int
	crashAt int
	fail    func(Op) error
	cap     int64
	latency time.Duration
	torn    *rand.Rand
	stats   Stats
}

type inode struct {
	data    []byte // what reads see
	durable []byte // what survives a crash
}

// New returns an empty FS with no size limit.
func New() *FS {
	return &FS{names: map[string]*inode{}, durable: map[string]*inode{}, locks: map[string]bool{}}
}

var _ queue.FS = (*FS)(nil)

// Crash simulates a power loss now and a reboot: everything not durable is
// lost, files open before it fail with ErrCrashed, locks are released. The
// FS works again at once, for the next queue.Open.
func (f *FS) Crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashLocked()
	f.down = false
	f.crashAt = 0
}

// CrashAt arranges a power loss when the n-th operation from now (n >= 1)
// is attempted: that operation does not happen, and it and every later one
// fail with ErrCrashed until Reboot.
func (f *FS) CrashAt(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashAt = f.ops + n
}

// Crashed reports whether a crash set with CrashAt has happened and Reboot
// has not been called since.
func (f *FS) Crashed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

// Reboot ends the failure after a CrashAt crash: the FS works again, as the
// crash left it.
func (f *FS) Reboot() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = false
}

// TearWrites makes later crashes keep, for each file whose unsynced writes
// extend its durable content, a random part of that extension (r decides
// how much), as a real disk may. Records cut that way must be detected by
// their reader. nil turns it off.
func (f *FS) TearWrites(r *rand.Rand) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.torn = r
}

func (f *FS) crashLocked() {
	f.gen++
	f.locks = map[string]bool{}
	f.names = cloneMap(f.durable)
	seen := map[*inode]bool{}
	for _, ino := range f.durable {
		if seen[ino] {
			continue
		}
		seen[ino] = true
		kept := slices.Clone(ino.durable)
		if f.torn != nil && len(ino.data) > len(ino.durable) && bytes.HasPrefix(ino.data, ino.durable) {
			extra := ino.data[len(ino.durable):]
			kept = append(kept, extra[:f.torn.IntN(len(extra)+1)]...)
		}
		ino.data = kept
	}
}

func cloneMap(m map[string]*inode) map[string]*inode {
	c := make(map[string]*inode, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Fail installs a hook called before every operation; an error it returns
// is the operation's result, and the operation does not happen. It runs
// with the FS locked: it must not call the FS. nil removes it.
func (f *FS) Fail(hook func(Op) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = hook
}

// SetCapacity limits the bytes all files may hold together (0: no limit).
// A write past it writes what fits and fails with ENOSPC, and Statfs
// reports what is left.
func (f *FS) SetCapacity(bytes int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cap = bytes
}

// SetSyncLatency makes every file and directory fsync take d, as a disk
// would; group commit shows only when fsyncs take time.
func (f *FS) SetSyncLatency(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.latency = d
}

// Stats returns the operation counters.
func (f *FS) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.Ops = f.ops
	return s
}

// Ops returns how many operations have been attempted.
func (f *FS) Ops() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ops
}

// Names lists the directory as the process sees it, sorted.
func (f *FS) Names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := make([]string, 0, len(f.names))
	for n := range f.names {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ReadFile returns a file's current content, outside the operation count.
func (f *FS) ReadFile(name string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ino := f.names[name]
	if ino == nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return slices.Clone(ino.data), nil
}

// WriteFile puts a file in place, content and name durable at once, outside
// the operation count: what another program (or a broken disk) left there.
func (f *FS) WriteFile(name string, data []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ino := &inode{data: slices.Clone(data), durable: slices.Clone(data)}
	f.names[name] = ino
	f.durable[name] = ino
}

// begin counts an operation and decides whether it happens. f.mu is held.
func (f *FS) begin(kind, name string) error {
	if f.down {
		return ErrCrashed
	}
	f.ops++
	if f.crashAt != 0 && f.ops >= f.crashAt {
		f.crashAt = 0
		f.crashLocked()
		f.down = true
		return ErrCrashed
	}
	if f.fail != nil {
		return f.fail(Op{N: f.ops, Kind: kind, Name: name})
	}
	return nil
}

func (f *FS) sleep() {
	f.mu.Lock()
	d := f.latency
	f.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
}

func checkName(op, name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return nil
}

// OpenFile implements queue.FS.
func (f *FS) OpenFile(name string, flag int, _ fs.FileMode) (queue.File, error) {
	if err := checkName("open", name); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("open", name); err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	ino := f.names[name]
	switch {
	case ino != nil && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	case ino == nil && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case ino == nil:
		ino = &inode{}
		f.names[name] = ino
	}
	if flag&os.O_TRUNC != 0 && flag&(os.O_WRONLY|os.O_RDWR) != 0 {
		ino.data = nil
	}
	return &file{fs: f, ino: ino, name: name, gen: f.gen, flag: flag}, nil
}

// Rename implements queue.FS.
func (f *FS) Rename(oldname, newname string) error {
	if err := checkName("rename", oldname); err != nil {
		return err
	}
	if err := checkName("rename", newname); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("rename", oldname); err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	ino := f.names[oldname]
	if ino == nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: fs.ErrNotExist}
	}
	delete(f.names, oldname)
	f.names[newname] = ino
	return nil
}

// Remove implements queue.FS.
func (f *FS) Remove(name string) error {
	if err := checkName("remove", name); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("remove", name); err != nil {
		return &fs.PathError{Op: "remove", Path: name, Err: err}
	}
	if f.names[name] == nil {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	delete(f.names, name)
	return nil
}

// ReadDirNames implements queue.FS.
func (f *FS) ReadDirNames() ([]string, error) {
	f.mu.Lock()
	if err := f.begin("readdir", ""); err != nil {
		f.mu.Unlock()
		return nil, &fs.PathError{Op: "readdirent", Path: ".", Err: err}
	}
	f.mu.Unlock()
	return f.Names(), nil
}

// SyncDir implements queue.FS.
func (f *FS) SyncDir() error {
	f.mu.Lock()
	if err := f.begin("syncdir", ""); err != nil {
		f.mu.Unlock()
		return &fs.PathError{Op: "sync", Path: ".", Err: err}
	}
	f.durable = cloneMap(f.names)
	f.stats.DirSyncs++
	f.mu.Unlock()
	f.sleep()
	return nil
}

// Statfs implements queue.FS.
func (f *FS) Statfs() (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("statfs", ""); err != nil {
		return 0, &fs.PathError{Op: "statfs", Path: ".", Err: err}
	}
	if f.cap == 0 {
		return 1 << 40, nil
	}
	return max(f.cap-f.usedLocked(), 0), nil
}

func (f *FS) usedLocked() int64 {
	var n int64
	seen := map[*inode]bool{}
	for _, ino := range f.names {
		if !seen[ino] {
			seen[ino] = true
			n += int64(len(ino.data))
		}
	}
	return n
}

// Lock implements queue.FS: one holder per name until Close or a crash.
func (f *FS) Lock(name string) (io.Closer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin("lock", name); err != nil {
		return nil, &fs.PathError{Op: "lock", Path: name, Err: err}
	}
	if f.locks[name] {
		return nil, fmt.Errorf("lock %s: %w", name, queue.ErrLocked)
	}
	f.locks[name] = true
	return &lock{fs: f, name: name, gen: f.gen}, nil
}

type lock struct {
	fs   *FS
	name string
	gen  int
	once sync.Once
}

func (l *lock) Close() error {
	l.once.Do(func() {
		l.fs.mu.Lock()
		defer l.fs.mu.Unlock()
		if l.gen == l.fs.gen {
			delete(l.fs.locks, l.name)
		}
	})
	return nil
}

type file struct {
	fs     *FS
	ino    *inode
	name   string
	gen    int
	flag   int
	off    int64
	closed bool
}

// op checks the file can be used and counts the operation; f.fs.mu is held.
func (fl *file) op(kind string) error {
	var err error
	switch {
	case fl.closed:
		err = os.ErrClosed
	case fl.gen != fl.fs.gen:
		err = ErrCrashed
	default:
		err = fl.fs.begin(kind, fl.name)
	}
	if err != nil {
		return &fs.PathError{Op: kind, Path: fl.name, Err: err}
	}
	return nil
}

func (fl *file) Read(p []byte) (int, error) {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if err := fl.op("read"); err != nil {
		return 0, err
	}
	if fl.flag&os.O_WRONLY != 0 {
		return 0, &fs.PathError{Op: "read", Path: fl.name, Err: syscall.EBADF}
	}
	if fl.off >= int64(len(fl.ino.data)) {
		return 0, io.EOF
	}
	n := copy(p, fl.ino.data[fl.off:])
	fl.off += int64(n)
	return n, nil
}

func (fl *file) ReadAt(p []byte, off int64) (int, error) {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if err := fl.op("read"); err != nil {
		return 0, err
	}
	if fl.flag&os.O_WRONLY != 0 {
		return 0, &fs.PathError{Op: "read", Path: fl.name, Err: syscall.EBADF}
	}
	if off < 0 {
		return 0, &fs.PathError{Op: "readat", Path: fl.name, Err: fs.ErrInvalid}
	}
	if off >= int64(len(fl.ino.data)) {
		return 0, io.EOF
	}
	n := copy(p, fl.ino.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (fl *file) Write(p []byte) (int, error) {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if err := fl.op("write"); err != nil {
		return 0, err
	}
	if fl.flag&os.O_APPEND != 0 {
		fl.off = int64(len(fl.ino.data))
	}
	n, err := fl.writeAt(p, fl.off)
	fl.off += int64(n)
	return n, err
}

func (fl *file) WriteAt(p []byte, off int64) (int, error) {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if err := fl.op("write"); err != nil {
		return 0, err
	}
	if fl.flag&os.O_APPEND != 0 || off < 0 {
		return 0, &fs.PathError{Op: "writeat", Path: fl.name, Err: fs.ErrInvalid}
	}
	return fl.writeAt(p, off)
}

// writeAt writes what the capacity allows; f.fs.mu is held.
func (fl *file) writeAt(p []byte, off int64) (int, error) {
	if fl.flag&(os.O_WRONLY|os.O_RDWR) == 0 {
		return 0, &fs.PathError{Op: "write", Path: fl.name, Err: syscall.EBADF}
	}
	var err error
	size := int64(len(fl.ino.data))
	if c := fl.fs.cap; c > 0 {
		room := c - fl.fs.usedLocked()
		if grow := off + int64(len(p)) - size; grow > room {
			keep := max(size+max(room, 0)-off, 0)
			p = p[:min(int64(len(p)), keep)]
			err = &fs.PathError{Op: "write", Path: fl.name, Err: syscall.ENOSPC}
		}
	}
	if end := off + int64(len(p)); end > size {
		fl.ino.data = append(fl.ino.data, make([]byte, end-size)...)
	}
	copy(fl.ino.data[off:], p)
	return len(p), err
}

func (fl *file) Sync() error {
	fl.fs.mu.Lock()
	if err := fl.op("sync"); err != nil {
		fl.fs.mu.Unlock()
		return err
	}
	fl.ino.durable = slices.Clone(fl.ino.data)
	fl.fs.stats.FileSyncs++
	fl.fs.mu.Unlock()
	fl.fs.sleep()
	return nil
}

func (fl *file) Stat() (fs.FileInfo, error) {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if err := fl.op("stat"); err != nil {
		return nil, err
	}
	return fileInfo{name: fl.name, size: int64(len(fl.ino.data))}, nil
}

func (fl *file) Close() error {
	fl.fs.mu.Lock()
	defer fl.fs.mu.Unlock()
	if fl.closed {
		return &fs.PathError{Op: "close", Path: fl.name, Err: os.ErrClosed}
	}
	fl.closed = true
	if fl.gen != fl.fs.gen {
		return nil // the process that opened it is gone
	}
	return fl.fs.begin("close", fl.name)
}

type fileInfo struct {
	name string
	size int64
}

func (i fileInfo) Name() string       { return i.name }
func (i fileInfo) Size() int64        { return i.size }
func (i fileInfo) Mode() fs.FileMode  { return 0o600 }
func (i fileInfo) ModTime() time.Time { return time.Time{} }
func (i fileInfo) IsDir() bool        { return false }
func (i fileInfo) Sys() any           { return nil }
