package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// t0 is when test messages arrive.
var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newClock() *testenv.Clock { return testenv.NewClock(t0) }

// options returns test options: the clock, a fixed jitter seed, no
// free-space margin to speak of.
func options(c *testenv.Clock) queue.Options {
	return queue.Options{Clock: c, Rand: rand.New(rand.NewPCG(1, 2)), MinFreeBytes: 1}
}

// fileOptions returns test options that store every message in a file of
// its own: the format before segments, which large messages keep.
func fileOptions(c *testenv.Clock) queue.Options {
	o := options(c)
	o.SegmentBodyBytes = -1
	return o
}

func openQueue(t testing.TB, fsys queue.FS, opts queue.Options) *queue.Queue {
	t.Helper()
	q, err := queue.Open(context.Background(), fsys, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = q.Close() })
	return q
}

func openDir(t testing.TB, dir string) *queue.DirFS {
	t.Helper()
	d, err := queue.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

// envelope returns an envelope with every field set, so that a round trip
// shows each one is kept.
func envelope(rcpts ...string) queue.Envelope {
	if len(rcpts) == 0 {
		rcpts = []string{"rcpt@example.net"}
	}
	e := queue.Envelope{
		From: "Sender+Tag@Example.COM", Size: 1234, Body: "8BITMIME", SMTPUTF8: true,
		Ret: "HDRS", EnvID: "QQ314159", ClientAddr: "127.0.0.1:54321", HELO: "client.test",
		Auth: "team-a/mailer",
	}
	for i, r := range rcpts {
		e.To = append(e.To, queue.Rcpt{Addr: r, Notify: []string{"FAILURE", "DELAY"}, ORcpt: fmt.Sprintf("rfc822;%s+%d", r, i)})
	}
	return e
}

// body returns n bytes of message that differ for each seed.
func body(seed, n int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "Subject: test %d\r\n\r\n", seed)
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "line %d of message %d\r\n", i, seed)
	}
	return b.Bytes()[:n]
}

func enqueue(t testing.TB, q *queue.Queue, env queue.Envelope, b []byte) queue.ID {
	t.Helper()
	id, err := q.Enqueue(context.Background(), env, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("Enqueue: %v", err)
	}
	return id
}

func readBody(t testing.TB, q *queue.Queue, id queue.ID) []byte {
	t.Helper()
	r, err := q.Body(context.Background(), id)
	if err != nil {
		t.Fatalf("Body(%s): %v", id, err)
	}
	defer closeQuietly(r)
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read body of %s: %v", id, err)
	}
	return b
}

// checkMessage checks that id is queued with env and body b, intact.
func checkMessage(t testing.TB, q *queue.Queue, id queue.ID, env queue.Envelope, b []byte) queue.Message {
	t.Helper()
	m, err := q.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get(%s): %v", id, err)
	}
	if !equalEnvelope(m.Envelope, env) {
		t.Errorf("envelope of %s:\n got %+v\nwant %+v", id, m.Envelope, env)
	}
	if m.Size != int64(len(b)) {
		t.Errorf("size of %s: %d, want %d", id, m.Size, len(b))
	}
	if got := readBody(t, q, id); !bytes.Equal(got, b) {
		t.Errorf("body of %s: %d bytes differ from the %d enqueued", id, len(got), len(b))
	}
	return m
}

func equalEnvelope(a, b queue.Envelope) bool {
	return fmt.Sprintf("%#v", a) == fmt.Sprintf("%#v", b)
}

func ids(msgs []queue.Message) []queue.ID {
	out := make([]queue.ID, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

func listAll(t testing.TB, q *queue.Queue) []queue.Message {
	t.Helper()
	msgs, err := q.List(context.Background(), "", 0)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return msgs
}

func mustLease(t testing.TB, q *queue.Queue, id queue.ID) *queue.Lease {
	t.Helper()
	l, err := q.Lease(context.Background(), id)
	if err != nil {
		t.Fatalf("Lease(%s): %v", id, err)
	}
	return l
}

var (
	ok250   = queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "ok"}
	temp451 = queue.Reply{Code: 451, Enhanced: "4.4.1", Text: "try later"}
	perm550 = queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
)

func wantErr(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want %v", err, target)
	}
}

func closeQueue(t testing.TB, q *queue.Queue) {
	t.Helper()
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func closeQuietly(c io.Closer) { _ = c.Close() }
