package queue

import (
	"errors"
	"math"
	"os"
	"syscall"
)

func statfs(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, &os.PathError{Op: "statfs", Path: path, Err: err}
	}
	if st.Bsize <= 0 {
		return 0, nil
	}
	// Bavail: the blocks an unprivileged process may still use.
	if st.Bavail > uint64(math.MaxInt64/st.Bsize) { //nolint:gosec // Bsize > 0
		return math.MaxInt64, nil
	}
	return int64(st.Bavail) * st.Bsize, nil //nolint:gosec // bounded just above
}

func flock(f *os.File) error {
	raw, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var lockErr error
	err = raw.Control(func(fd uintptr) {
		lockErr = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB) //nolint:gosec // a file descriptor fits an int
	})
	if err != nil {
		return err
	}
	if errors.Is(lockErr, syscall.EWOULDBLOCK) {
		return ErrLocked
	}
	return lockErr
}
