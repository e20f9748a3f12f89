package queue_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// TestFormatV1 opens a spool holding a message file written by version 1
// of the format (testdata/v1.msg: three recipients, a snapshot and three
// journal records: one delivered, held, one failed) and reads back its
// envelope, state and body. A change to the file format or the journal's
// framing that cannot read existing spools fails here.
func TestFormatV1(t *testing.T) {
	data, err := os.ReadFile("testdata/v1.msg")
	if err != nil {
		t.Fatal(err)
	}
	const id = queue.ID("01hf7yat00yqhhxd8zvq2z7knv")
	q, _ := openFixture(t, string(id)+".msg", data)
	m, err := q.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	checkFixture(t, q, m, "rrr@example.net")
}

// TestFormatV2 opens a spool holding a segment written by version 2 of
// the format (testdata/v2.seg): message a (three recipients; a journal
// record deferring one, delivering one and holding the message, another
// failing the third), message b (deleted), message c (delivered), and
// half a record, torn. It reads back a alone, with its state and body. A
// change to the segment format that cannot read existing spools fails
// here.
func TestFormatV2(t *testing.T) {
	data, err := os.ReadFile("testdata/v2.seg")
	if err != nil {
		t.Fatal(err)
	}
	q, dir := openFixture(t, "0000000000000007.seg", data)
	ctx := context.Background()
	msgs, err := q.List(ctx, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	const id = queue.ID("01hf7yat00aaaaaaaaaaaaaaaa")
	if len(msgs) != 1 || msgs[0].ID != id {
		t.Fatalf("recovered %+v, want %s alone", msgs, id)
	}
	checkFixture(t, q, msgs[0], "ccc@example.net")
	// New messages go to a new segment, after the old one.
	if _, err := q.Enqueue(ctx, queue.Envelope{To: []queue.Rcpt{{Addr: "x@example.net"}}}, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "0000000000000008.seg")); err != nil {
		t.Errorf("new segment: %v", err)
	}
}

// openFixture opens a queue on a new directory holding data under name.
func openFixture(t *testing.T, name string, data []byte) (*queue.Queue, string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
		t.Fatal(err)
	}
	fsys, err := queue.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fsys.Close() })
	q, err := queue.Open(context.Background(), fsys, queue.Options{MinFreeBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q, dir
}

// checkFixture checks the message both fixtures hold (their third
// recipient apart): envelope, held, each recipient's state, the retry
// time and the body.
func checkFixture(t *testing.T, q *queue.Queue, m queue.Message, thirdRcpt string) {
	t.Helper()
	arrival := time.Unix(1700000000, 0).UTC()
	if !m.Arrival.Equal(arrival) || m.Envelope.From != "a@example.com" || len(m.Envelope.To) != 3 ||
		m.Envelope.To[2].Addr != thirdRcpt || !m.Held {
		t.Fatalf("message: %+v", m)
	}
	want := []struct {
		state    queue.State
		attempts int
		code     int
		text     string
	}{{queue.Pending, 2, 451, "later"}, {queue.Delivered, 1, 250, "ok <queued> & done"}, {queue.Failed, 1, 550, "no such user"}}
	for i, w := range want {
		s := m.Recipients[i]
		if s.State != w.state || s.Attempts != w.attempts || s.Reply.Code != w.code || s.Reply.Text != w.text {
			t.Errorf("recipient %d: %+v, want %+v", i, s, w)
		}
	}
	if next := m.Recipients[0].NextAttempt; !next.Equal(arrival.Add(2 * time.Hour)) {
		t.Errorf("next attempt %v", next)
	}
	body, err := q.Body(context.Background(), m.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = body.Close() }()
	b, err := io.ReadAll(body)
	if err != nil || string(b) != "Subject: fixture\r\n\r\nbody\r\n" {
		t.Errorf("body %q, %v", b, err)
	}
}
