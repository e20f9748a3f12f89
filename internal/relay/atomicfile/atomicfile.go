// Package atomicfile replaces a small file so that a crash or a power loss
// leaves either its old content or its new one, never a mix: the relay's
// last good table, its TLS report counts.
package atomicfile

import (
	"os"
	"path/filepath"
)

// WriteFile replaces dir/name with data: a temporary file in dir, fsync,
// rename over the old file, fsync of dir (the rename is durable only once
// the directory is).
func WriteFile(dir, name string, data []byte) error {
	tmp, err := os.CreateTemp(dir, name+".tmp-*")
	if err != nil {
		return err
	}
	defer func() { _ = os.Remove(tmp.Name()) }() // a no-op once renamed
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), filepath.Join(dir, name))
	}
	if err != nil {
		return err
	}
	d, err := os.Open(dir) //nolint:gosec // a directory of the relay's own configuration
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
