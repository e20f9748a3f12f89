// Package atomicfile replaces a small file so that a crash or a power loss
// leaves either its old content or its new one, never a mix: the relay's
// last good table, its TLS report counts, its MTA-STS policies.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"os"
)

// WriteFile replaces dir/name with data: a temporary file in dir named
// name.tmp-<random>, fsync, rename over the old file, fsync of dir (the
// rename is durable only once the directory is).
func WriteFile(dir, name string, data []byte) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return err
	}
	defer func() { _ = root.Close() }()
	var suffix [8]byte
	_, _ = rand.Read(suffix[:])
	return WriteIn(root, name+".tmp-"+hex.EncodeToString(suffix[:]), name, data)
}

// WriteIn replaces name in root with data by way of the temporary file
// tmp, which must not exist (a caller that removes its leftovers after a
// crash chooses a name it recognizes): write, fsync, rename over name,
// fsync of the directory. The temporary file is removed on failure.
func WriteIn(root *os.Root, tmp, name string, data []byte) error {
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = root.Rename(tmp, name)
	}
	if err != nil {
		_ = root.Remove(tmp)
		return err
	}
	return SyncDir(root)
}

// SyncDir fsyncs root's directory, which makes a rename or a removal in it
// durable.
func SyncDir(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
