package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"testing"
)

// The two journals' formats, as internal/relay/queue and internal/relay/notify use them.
var (
	queueFormat  = Format{Layout: CRCTrailer, MaxPayload: 2 << 20}
	notifyFormat = Format{Layout: CRCHeader, MaxPayload: 64 << 10}
	formats      = map[string]Format{"trailer": queueFormat, "header": notifyFormat}
)

// readAll decodes b with Read and with Next, checks that both see the same
// records and the same end, and returns the payloads and the end's error
// (nil for a clean end).
func readAll(t *testing.T, f Format, b []byte) ([][]byte, int, error) {
	t.Helper()
	var got [][]byte
	r := bytes.NewReader(b)
	var readErr error
	for {
		p, err := f.Read(r)
		if err != nil {
			readErr = err
			break
		}
		got = append(got, p)
	}
	off := 0
	for i := 0; ; i++ {
		p, n, err := f.Next(b[off:])
		if err != nil {
			if !errors.Is(err, readErr) || i != len(got) {
				t.Fatalf("Next ends at record %d with %v, Read at %d with %v", i, err, len(got), readErr)
			}
			break
		}
		if i >= len(got) || !bytes.Equal(p, got[i]) {
			t.Fatalf("Next record %d = %q, Read saw %d records", i, p, len(got))
		}
		off += n
	}
	if errors.Is(readErr, io.EOF) {
		readErr = nil
	}
	return got, off, readErr
}

func TestRoundTrip(t *testing.T) {
	payloads := [][]byte{[]byte(`{"a":1}`), []byte("x"), bytes.Repeat([]byte("y"), 1000)}
	for name, f := range formats {
		t.Run(name, func(t *testing.T) {
			var b []byte
			for _, p := range payloads {
				var err error
				if b, err = f.Append(b, p); err != nil {
					t.Fatal(err)
				}
			}
			got, end, err := readAll(t, f, b)
			if err != nil || end != len(b) || len(got) != len(payloads) {
				t.Fatalf("read %d records to %d of %d: %v", len(got), end, len(b), err)
			}
			for i := range got {
				if !bytes.Equal(got[i], payloads[i]) {
					t.Errorf("record %d = %q, want %q", i, got[i], payloads[i])
				}
			}
		})
	}
}

func TestAppendRefuses(t *testing.T) {
	f := Format{Layout: CRCHeader, MaxPayload: 4}
	for _, p := range [][]byte{nil, []byte("12345")} {
		b, err := f.Append([]byte("keep"), p)
		if !errors.Is(err, ErrTooLarge) || string(b) != "keep" {
			t.Errorf("Append(%q) = %q, %v", p, b, err)
		}
	}
}

// TestTorn cuts a journal of two records at every byte: the first record
// reads back once it is whole, and the cut ends the journal as truncated.
func TestTorn(t *testing.T) {
	for name, f := range formats {
		t.Run(name, func(t *testing.T) {
			first, _ := f.Append(nil, []byte(`{"first":true}`))
			b, _ := f.Append(bytes.Clone(first), []byte(`{"second":true}`))
			for cut := 1; cut < len(b); cut++ {
				if cut == len(first) {
					continue
				}
				got, end, err := readAll(t, f, b[:cut])
				wantRecs := 0
				if cut > len(first) {
					wantRecs = 1
				}
				if !errors.Is(err, ErrTruncated) || len(got) != wantRecs || end != wantRecs*len(first) {
					t.Errorf("cut at %d: %d records to %d, %v", cut, len(got), end, err)
				}
			}
		})
	}
}

// TestCorrupt flips each bit of a record: no flip reads back as a record.
func TestCorrupt(t *testing.T) {
	for name, f := range formats {
		t.Run(name, func(t *testing.T) {
			good, _ := f.Append(nil, []byte(`{"a":1}`))
			for i := range len(good) * 8 {
				b := bytes.Clone(good)
				b[i/8] ^= 1 << (i % 8)
				got, _, err := readAll(t, f, b)
				if len(got) != 0 || err == nil {
					t.Fatalf("bit %d flipped: read %q, %v", i, got, err)
				}
			}
			// Every flip of a payload or CRC bit is a checksum mismatch.
			b := bytes.Clone(good)
			b[len(b)-1] ^= 1
			b[Overhead/2] ^= 0x80
			if _, _, err := readAll(t, f, b); !errors.Is(err, ErrCorrupt) {
				t.Errorf("checksum: %v", err)
			}
		})
	}
}

func TestBadLength(t *testing.T) {
	for name, f := range formats {
		t.Run(name, func(t *testing.T) {
			huge := binary.BigEndian.AppendUint32(nil, uint32(f.MaxPayload)+1) //nolint:gosec // small
			huge = append(huge, make([]byte, 12)...)
			for what, b := range map[string][]byte{"zeros": make([]byte, 12), "huge": huge} {
				if _, _, err := readAll(t, f, b); !errors.Is(err, ErrCorrupt) {
					t.Errorf("%s: %v", what, err)
				}
			}
		})
	}
}

// TestFixtures decodes journals written before this package existed, by
// internal/relay/queue (a message file's journal) and internal/relay/notify (a segment), and
// encodes their payloads back to the same bytes.
func TestFixtures(t *testing.T) {
	for _, c := range []struct {
		name string
		f    Format
	}{{"queue-journal", queueFormat}, {"notify-segment", notifyFormat}} {
		t.Run(c.name, func(t *testing.T) {
			bin, err := os.ReadFile("testdata/" + c.name + ".bin")
			if err != nil {
				t.Fatal(err)
			}
			lines, err := os.ReadFile("testdata/" + c.name + ".jsonl")
			if err != nil {
				t.Fatal(err)
			}
			want := bytes.Split(bytes.TrimSuffix(lines, []byte("\n")), []byte("\n"))
			got, end, err := readAll(t, c.f, bin)
			if err != nil || end != len(bin) || len(got) != len(want) {
				t.Fatalf("read %d records (want %d) to %d of %d: %v", len(got), len(want), end, len(bin), err)
			}
			var again []byte
			for i := range got {
				if !bytes.Equal(got[i], want[i]) {
					t.Errorf("record %d = %s, want %s", i, got[i], want[i])
				}
				again, _ = c.f.Append(again, got[i])
			}
			if !bytes.Equal(again, bin) {
				t.Errorf("payloads encode to other bytes than the fixture")
			}
		})
	}
}

// FuzzRead: no input panics Read or Next, both see the same records, and
// the records read back encode to the bytes they were read from.
func FuzzRead(f *testing.F) {
	for _, name := range []string{"queue-journal", "notify-segment"} {
		b, err := os.ReadFile("testdata/" + name + ".bin")
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, name == "queue-journal")
	}
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 0, 'x'}, false)
	f.Add([]byte{}, true)
	f.Fuzz(func(t *testing.T, b []byte, trailer bool) {
		fm := Format{Layout: CRCHeader, MaxPayload: 64 << 10}
		if trailer {
			fm.Layout = CRCTrailer
		}
		got, end, err := readAll(t, fm, b)
		if err != nil && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("error %v", err)
		}
		if err == nil && end != len(b) {
			t.Fatalf("clean end at %d of %d", end, len(b))
		}
		var again []byte
		for _, p := range got {
			if again, err = fm.Append(again, p); err != nil {
				t.Fatal(err)
			}
		}
		if !bytes.Equal(again, b[:end]) {
			t.Fatalf("records encode to other bytes")
		}
	})
}

// TestSeal: a record sealed in place is the record Append makes.
func TestSeal(t *testing.T) {
	payload := []byte("segment record")
	want, err := queueFormat.Append(nil, payload)
	if err != nil {
		t.Fatal(err)
	}
	got, err := queueFormat.Seal(append(make([]byte, 4), payload...))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Seal: %x, %v; Append: %x", got, err, want)
	}
	if _, err := queueFormat.Seal(make([]byte, 4)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("empty payload sealed: %v", err)
	}
}

// TestDamagedRecordSkippable: a record whose CRC fails but whose length
// holds is a DamagedError of its size, an ErrCorrupt, and Read has
// consumed it: the next Read returns the record after it.
func TestDamagedRecordSkippable(t *testing.T) {
	for name, f := range formats {
		t.Run(name, func(t *testing.T) {
			first, _ := f.Append(nil, []byte(`{"first":true}`))
			b, _ := f.Append(bytes.Clone(first), []byte(`{"second":true}`))
			b[len(first)-5] ^= 0x10 // in the first record's payload or CRC
			r := bytes.NewReader(b)
			_, err := f.Read(r)
			var damaged DamagedError
			if !errors.As(err, &damaged) || !errors.Is(err, ErrCorrupt) || damaged.Size != len(first) {
				t.Fatalf("Read of a damaged record: %v (%+v), want a DamagedError of %d bytes", err, damaged, len(first))
			}
			if p, err := f.Read(r); err != nil || string(p) != `{"second":true}` {
				t.Fatalf("the record after the damaged one: %q, %v", p, err)
			}
			// A length out of bounds is no DamagedError: nothing can
			// be skipped.
			bad := bytes.Clone(first)
			bad[0] = 0xff
			if _, err := f.Read(bytes.NewReader(bad)); errors.As(err, &damaged) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Read of a record with a bad length: %v", err)
			}
		})
	}
}
