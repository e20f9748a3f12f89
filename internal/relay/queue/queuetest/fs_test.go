package queuetest_test

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
	"testing"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
)

func write(w io.Writer, s string) error {
	_, err := io.WriteString(w, s)
	return err
}

func must(t *testing.T, errs ...error) {
	t.Helper()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

func read(t *testing.T, fsys *queuetest.FS, name string) string {
	t.Helper()
	b, err := fsys.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCrashKeepsOnlyWhatWasSynced(t *testing.T) {
	fsys := queuetest.New()
	f, err := fsys.OpenFile("a", os.O_RDWR|os.O_CREATE, 0o600)
	must(t, err)
	must(t, write(f, "hello"), f.Sync(), write(f, " world"), fsys.SyncDir())
	g, err := fsys.OpenFile("never-synced", os.O_RDWR|os.O_CREATE, 0o600)
	must(t, err)
	must(t, write(g, "data"), g.Sync())
	must(t, fsys.Rename("a", "b"))

	fsys.Crash()
	if _, err := f.Write([]byte("x")); !errors.Is(err, queuetest.ErrCrashed) {
		t.Errorf("write to a file from before the crash: %v", err)
	}
	if got := read(t, fsys, "a"); got != "hello" {
		t.Errorf("after the crash: %q, want the synced part", got)
	}
	for _, name := range []string{"b", "never-synced"} {
		if _, err := fsys.ReadFile(name); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s, named without a directory fsync, survived: %v", name, err)
		}
	}
}

func TestNameDurableContentNot(t *testing.T) {
	fsys := queuetest.New()
	f, err := fsys.OpenFile("a", os.O_RDWR|os.O_CREATE, 0o600)
	must(t, err)
	must(t, write(f, "unsynced"), fsys.SyncDir())
	fsys.Crash()
	if got := read(t, fsys, "a"); got != "" {
		t.Errorf("file never fsynced came back with %q, want empty", got)
	}
}

func TestCrashAt(t *testing.T) {
	fsys := queuetest.New()
	fsys.CrashAt(2)
	f, err := fsys.OpenFile("a", os.O_RDWR|os.O_CREATE, 0o600)
	must(t, err)
	if err := write(f, "x"); !errors.Is(err, queuetest.ErrCrashed) || !fsys.Crashed() {
		t.Fatalf("second operation: %v", err)
	}
	if _, err := fsys.ReadDirNames(); !errors.Is(err, queuetest.ErrCrashed) {
		t.Errorf("operation after the crash: %v", err)
	}
	fsys.Reboot()
	if names, err := fsys.ReadDirNames(); err != nil || len(names) != 0 {
		t.Errorf("after reboot: %q, %v", names, err)
	}
}

func TestCapacity(t *testing.T) {
	fsys := queuetest.New()
	fsys.SetCapacity(10)
	f, err := fsys.OpenFile("a", os.O_RDWR|os.O_CREATE, 0o600)
	must(t, err)
	n, err := f.Write([]byte("0123456789abc"))
	if n != 10 || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("write past capacity: %d, %v", n, err)
	}
	if free, err := fsys.Statfs(); free != 0 || err != nil {
		t.Errorf("Statfs = %d, %v", free, err)
	}
	must(t, fsys.Remove("a"))
	if free, _ := fsys.Statfs(); free != 10 {
		t.Errorf("Statfs after remove = %d", free)
	}
}

func TestLock(t *testing.T) {
	fsys := queuetest.New()
	l, err := fsys.Lock("lock")
	must(t, err)
	if _, err := fsys.Lock("lock"); !errors.Is(err, queue.ErrLocked) {
		t.Errorf("second lock: %v", err)
	}
	must(t, l.Close())
	l, err = fsys.Lock("lock")
	must(t, err)
	fsys.Crash() // a crash releases it
	_, err = fsys.Lock("lock")
	must(t, err, l.Close())
}
