package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// WriteFile replaces the file whole and leaves no temporary file behind.
func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	for _, data := range []string{"first", "second, longer"} {
		if err := WriteFile(dir, "f.json", []byte(data)); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, "f.json"))
		if err != nil || string(got) != data {
			t.Fatalf("read %q, %v; want %q", got, err, data)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Errorf("directory holds %v (%v), want only f.json", entries, err)
	}
	if err := WriteFile(filepath.Join(dir, "missing"), "f.json", nil); err == nil {
		t.Error("a missing directory: no error")
	}
}
