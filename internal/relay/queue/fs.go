package queue

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/postgate/postgate/internal/relay/atomicfile"
)

// FS is the queue's view of its spool directory: one flat directory, names
// without slashes. Every write the queue relies on goes through it, so a test
// implementation can keep what was fsynced apart from what was only written
// and drop the latter at a simulated crash (see package queuetest). A crash
// test with kill -9 alone proves nothing about fsync: the page cache
// survives it.
//
// Durability contract the queue assumes, and the one queuetest.FS enforces:
// a file's content is durable once File.Sync returns; a name created,
// renamed or removed in the directory is durable once SyncDir returns.
type FS interface {
	// OpenFile opens name with os.OpenFile flags and permissions.
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	// Rename replaces newname with oldname atomically.
	Rename(oldname, newname string) error
	// Remove removes name.
	Remove(name string) error
	// ReadDirNames lists the directory, in no particular order.
	ReadDirNames() ([]string, error)
	// SyncDir fsyncs the directory itself, making creations, renames and
	// removals durable.
	SyncDir() error
	// Statfs returns the bytes available to the relay on the directory's
	// filesystem.
	Statfs() (free int64, err error)
	// Lock takes an exclusive lock held until the returned Closer is
	// closed, so that two processes never share a spool. It fails at once
	// when another holder has it.
	Lock(name string) (io.Closer, error)
}

// File is an open file in an FS. *os.File implements it.
type File interface {
	io.Reader
	io.ReaderAt
	io.Writer
	io.WriterAt
	io.Closer
	Sync() error
	Stat() (fs.FileInfo, error)
}

// DirFS is the FS of a real directory. Names resolve inside it only (an
// os.Root), so a name can never reach outside the spool.
type DirFS struct {
	root *os.Root
	path string
}

// OpenDir opens the directory at path as an FS, creating it (and its
// parents) when missing, with each new directory made durable in its parent
// so that messages committed into it survive a crash.
func OpenDir(path string) (*DirFS, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("spool directory %s: %w", path, err)
	}
	if err := mkdirDurable(abs); err != nil {
		return nil, fmt.Errorf("spool directory %s: %w", abs, err)
	}
	root, err := os.OpenRoot(abs)
	if err != nil {
		return nil, fmt.Errorf("spool directory %s: %w", abs, err)
	}
	return &DirFS{root: root, path: abs}, nil
}

// mkdirDurable creates dir and missing parents, fsyncing the parent of each
// directory it creates.
func mkdirDurable(dir string) error {
	info, err := os.Stat(dir)
	if err == nil {
		if !info.IsDir() {
			return fmt.Errorf("not a directory")
		}
		return nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := mkdirDurable(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return syncPath(parent)
}

func syncPath(dir string) error {
	d, err := os.Open(dir) // #nosec G304 -- the spool directory the operator configured.
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Path returns the directory's absolute path.
func (d *DirFS) Path() string { return d.path }

// Close releases the directory handle.
func (d *DirFS) Close() error { return d.root.Close() }

// OpenFile implements FS.
func (d *DirFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := d.root.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// Rename implements FS.
func (d *DirFS) Rename(oldname, newname string) error { return d.root.Rename(oldname, newname) }

// Remove implements FS.
func (d *DirFS) Remove(name string) error { return d.root.Remove(name) }

// ReadDirNames implements FS.
func (d *DirFS) ReadDirNames() ([]string, error) {
	f, err := d.root.Open(".")
	if err != nil {
		return nil, err
	}
	defer closeQuietly(f)
	return f.Readdirnames(-1)
}

// SyncDir implements FS.
func (d *DirFS) SyncDir() error { return atomicfile.SyncDir(d.root) }

// Statfs implements FS.
func (d *DirFS) Statfs() (int64, error) { return statfs(d.path) }

// Lock implements FS with flock(2) on a file in the directory.
func (d *DirFS) Lock(name string) (io.Closer, error) {
	f, err := d.root.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := flock(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock %s: %w", filepath.Join(d.path, name), err)
	}
	return f, nil
}
