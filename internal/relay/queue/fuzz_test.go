package queue

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// validRecord returns a message file with a journal, for the fuzz seeds.
func validRecord(t testing.TB, rcpts int, body string, held bool) []byte {
	h := &header{ID: newID(time.Unix(1700000000, 0)), Arrival: time.Unix(1700000000, 0).UTC()}
	h.Envelope = Envelope{From: "a@example.com", Body: "8BITMIME", Ret: "FULL"}
	for i := range rcpts {
		h.Envelope.To = append(h.Envelope.To, Rcpt{Addr: strings.Repeat("r", i+1) + "@example.net", Notify: []string{"FAILURE"}})
	}
	js, err := encodeHeaderJSON(h)
	if err != nil {
		t.Fatal(err)
	}
	out := append(fixedHeader(js, int64(len(body)), crc32.Checksum([]byte(body), castagnoli)), js...)
	out = append(out, body...)
	m := newMessage(h, int64(len(body)))
	m.Held = held
	m.Recipients[0] = RecipientStatus{State: Pending, Attempts: 2, LastAttempt: h.Arrival.Add(time.Hour),
		NextAttempt: h.Arrival.Add(2 * time.Hour), Reply: Reply{Code: 451, Enhanced: "4.4.1", Text: "later"}}
	rec, err := encodeRecord(snapshotRecord(&m, h.Arrival.Add(time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	return append(out, rec...)
}

// FuzzDecodeFile: no input panics decodeFile, and whatever it accepts is a
// valid message that encodes back to the header it came from and whose
// state a snapshot reproduces.
func FuzzDecodeFile(f *testing.F) {
	f.Add(validRecord(f, 1, "", false))
	f.Add(validRecord(f, 3, "Subject: x\r\n\r\nbody\r\n", true))
	f.Add([]byte(magic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, l, err := decodeFile(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}
		checkDecoded(t, data, m, l)
	})
}

// FuzzDecodeHeaderJSON fuzzes the JSON layer, which the CRC hides from
// FuzzDecodeFile's mutations.
func FuzzDecodeHeaderJSON(f *testing.F) {
	rec := validRecord(f, 2, "x", false)
	f.Add(rec[fixedLen : fixedLen+int(binary.BigEndian.Uint32(rec[4:]))])
	f.Add([]byte(`{"id":"00000000000000000000000000","arrival":"2026-01-01T00:00:00Z","envelope":{"from":"","to":[{"addr":"x"}]}}`))
	f.Fuzz(func(t *testing.T, js []byte) {
		h, err := decodeHeaderJSON(js)
		if err != nil {
			return
		}
		if err := h.Envelope.validate(MaxRecipients); err != nil {
			t.Fatalf("accepted an invalid envelope: %v", err)
		}
		// A header that decodes makes a file that decodes to it.
		data := append(fixedHeader(js, 0, 0), js...)
		m, l, err := decodeFile(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("file with an accepted header: %v", err)
		}
		checkDecoded(t, data, m, l)
	})
}

// FuzzJournal fuzzes journal records behind a valid header and body.
func FuzzJournal(f *testing.F) {
	base := validRecord(f, 3, "body", false)
	_, l, err := decodeFile(bytes.NewReader(base), int64(len(base)))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(base[l.bodyEnd():], false)
	f.Add([]byte(`{"t":"2026-01-01T00:00:00Z","rcpts":[{"i":2,"state":"delivered"}]}`), true)
	f.Add([]byte(`{"t":"2026-01-01T00:00:00Z","rcpts":[{"i":7,"state":"delivered"}]}`), true)
	f.Fuzz(func(t *testing.T, journal []byte, frame bool) {
		if frame {
			// Give the fuzzer valid framing, so it reaches the JSON.
			b := binary.BigEndian.AppendUint32(nil, uint32(len(journal))) //nolint:gosec // fuzz inputs are small
			b = append(b, journal...)
			journal = append(b, crcBytes(b)...)
		}
		data := append(bytes.Clone(base[:l.bodyEnd()]), journal...)
		m, l2, err := decodeFile(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			t.Fatalf("valid header and body refused: %v", err)
		}
		checkDecoded(t, data, m, l2)
	})
}

func crcBytes(b []byte) []byte {
	return binary.BigEndian.AppendUint32(nil, crc32.Checksum(b, castagnoli))
}

// checkDecoded checks what decodeFile accepted from data.
func checkDecoded(t *testing.T, data []byte, m Message, l layout) {
	t.Helper()
	if err := m.Envelope.validate(MaxRecipients); err != nil {
		t.Fatalf("accepted an invalid envelope: %v", err)
	}
	if len(m.Recipients) != len(m.Envelope.To) {
		t.Fatalf("%d statuses for %d recipients", len(m.Recipients), len(m.Envelope.To))
	}
	for i, s := range m.Recipients {
		if err := s.validate(); err != nil {
			t.Fatalf("recipient %d: accepted an invalid status: %v", i, err)
		}
	}
	if l.bodyEnd() > int64(len(data)) || l.end > int64(len(data)) || l.end < l.bodyEnd() || m.Size != l.bodyLen {
		t.Fatalf("layout %+v outside %d bytes", l, len(data))
	}
	// The valid prefix decodes to the same message: what follows the
	// last valid record never counts.
	m2, l2, err := decodeFile(bytes.NewReader(data[:l.end]), l.end)
	if err != nil || l2.end != l.end || !equalMessages(m, m2) {
		t.Fatalf("prefix decodes differently: %v", err)
	}
	// A snapshot of the state reproduces it.
	rec, err := encodeRecord(snapshotRecord(&m, m.Arrival))
	if err != nil {
		t.Fatal(err)
	}
	snap := append(bytes.Clone(data[:l.bodyEnd()]), rec...)
	m3, _, err := decodeFile(bytes.NewReader(snap), int64(len(snap)))
	if err != nil || !equalMessages(m, m3) {
		t.Fatalf("snapshot decodes differently: %v", err)
	}
}

func equalMessages(a, b Message) bool {
	ja, err1 := marshal(a)
	jb, err2 := marshal(b)
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}

// FuzzReplaySegment: no segment content panics recovery or makes Open
// fail, and every message recovered from one reads back whole: a valid
// envelope, a status per recipient, a body that matches its CRC.
func FuzzReplaySegment(f *testing.F) {
	h := &header{ID: newID(time.Unix(1700000000, 0)), Arrival: time.Unix(1700000000, 0).UTC()}
	h.Envelope = Envelope{From: "a@example.com", To: []Rcpt{{Addr: "b@example.net"}, {Addr: "c@example.net"}}}
	js, err := encodeHeaderJSON(h)
	if err != nil {
		f.Fatal(err)
	}
	rec, _, err := sealMessage(append(messageRecord(nil, js), "Subject: x\r\n\r\nbody\r\n"...), len(js))
	if err != nil {
		f.Fatal(err)
	}
	held := true
	st, err := stateRecord(nil, h.ID, &record{Time: h.Arrival, Held: &held, Rcpts: []rcptStatus{{Index: 1, RecipientStatus: RecipientStatus{State: Delivered}}}})
	if err != nil {
		f.Fatal(err)
	}
	seg := append(append([]byte(segMagic), rec...), st...)
	f.Add(seg)
	f.Add(append(bytes.Clone(seg), deleteRecord(h.ID)...))
	f.Add(seg[:len(seg)-3])
	f.Add([]byte(segMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, segName(0)), data, 0o600); err != nil {
			t.Fatal(err)
		}
		fsys, err := OpenDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = fsys.Close() }()
		q, err := Open(context.Background(), fsys, Options{MinFreeBytes: 1})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		defer func() { _ = q.Close() }()
		for id, e := range q.entries {
			m, err := q.segMessage(e)
			if err != nil {
				t.Fatalf("%s: %v", id, err)
			}
			if len(m.Recipients) != len(m.Envelope.To) || m.Envelope.validate(MaxRecipients) != nil {
				t.Fatalf("%s: invalid message %+v", id, m)
			}
			r, err := q.segBody(e)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadAll(r); err != nil {
				t.Fatalf("%s: body: %v", id, err)
			}
			_ = r.Close()
		}
	})
}
