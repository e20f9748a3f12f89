package notify

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/postgate/postgate/internal/relay/queue"
)

func TestReadRecord(t *testing.T) {
	good := appendRecord(nil, []byte(`{"a":1}`))
	badCRC := bytes.Clone(good)
	badCRC[len(badCRC)-1] ^= 1
	for _, tc := range []struct {
		name string
		in   []byte
		want []error // one per record read, then the end
	}{
		{"empty", nil, []error{io.EOF}},
		{"one", good, []error{nil, io.EOF}},
		{"two", append(bytes.Clone(good), good...), []error{nil, nil, io.EOF}},
		{"header cut", good[:5], []error{errTruncated}},
		{"payload cut", good[:len(good)-1], []error{errTruncated}},
		{"after a good one, cut", append(bytes.Clone(good), good[:3]...), []error{nil, errTruncated}},
		{"checksum", badCRC, []error{errCorrupt}},
		{"zero length", make([]byte, 12), []error{errCorrupt}},
		{"huge length", []byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0}, []error{errCorrupt}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := bytes.NewReader(tc.in)
			for i, want := range tc.want {
				p, err := readRecord(r)
				if !errors.Is(err, want) {
					t.Fatalf("record %d: %v, want %v", i, err, want)
				}
				if err == nil && string(p) != `{"a":1}` {
					t.Fatalf("record %d: %q", i, p)
				}
			}
		})
	}
}

// FuzzReadRecord: the decoder never panics, never returns more than it was
// given, and reads back what appendRecord wrote.
func FuzzReadRecord(f *testing.F) {
	f.Add(appendRecord(nil, []byte(`{"t":1}`)))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0, 'x'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := bytes.NewReader(in)
		total := 0
		for {
			p, err := readRecord(r)
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, errTruncated) && !errors.Is(err, errCorrupt) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			total += recordHeader + len(p)
			if total > len(in) {
				t.Fatalf("read %d bytes of %d", total, len(in))
			}
		}
		if len(in) > 0 && len(in) <= maxRecord {
			p, err := readRecord(bytes.NewReader(appendRecord(nil, in)))
			if err != nil || !bytes.Equal(p, in) {
				t.Fatalf("round trip: %v", err)
			}
		}
	})
}

func TestCursor(t *testing.T) {
	dir := t.TempDir()
	fsys, err := queue.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fsys.Close() }()
	if p, err := readCursor(fsys); err != nil || p != (position{}) {
		t.Fatalf("no cursor file: %v, %v", p, err)
	}
	f, err := openCursor(fsys)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	for _, p := range []position{{1, 0}, {12345678901, 1 << 40}, {2, 17}} {
		if err := writeCursor(f, p); err != nil {
			t.Fatal(err)
		}
		if got, err := readCursor(fsys); err != nil || got != p {
			t.Errorf("wrote %v, read %v, %v", p, got, err)
		}
	}
	good := formatCursor(position{3, 99})
	torn := bytes.Clone(good)
	torn[5] = '7' // a digit changed: the checksum no longer matches
	for _, bad := range [][]byte{good[:20], torn, []byte("garbage"), append(bytes.Clone(good), '\n')} {
		if err := os.WriteFile(filepath.Join(dir, "cursor"), bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if p, err := readCursor(fsys); err == nil {
			t.Errorf("%q read as %v", bad, p)
		}
	}
}
