package queue_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

func TestRecoveryAfterRestart(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	q := openQueue(t, openDir(t, dir), options(clock))
	sizes := []int{0, 1, 1000, 64 << 10, 1 << 20, 3<<20 + 17}
	want := map[queue.ID][]byte{}
	envs := map[queue.ID]queue.Envelope{}
	for i, n := range sizes {
		env := envelope("a@example.net", "b@example.org")
		b := body(i, n)
		id := enqueue(t, q, env, b)
		if _, err := queue.ParseID(string(id)); err != nil {
			t.Fatal(err)
		}
		want[id], envs[id] = b, env
		clock.Add(time.Second)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	q2 := openQueue(t, openDir(t, dir), options(clock))
	msgs := listAll(t, q2)
	if len(msgs) != len(sizes) {
		t.Fatalf("recovered %d messages, want %d", len(msgs), len(sizes))
	}
	for i, m := range msgs {
		checkMessage(t, q2, m.ID, envs[m.ID], want[m.ID])
		if !m.Arrival.Equal(t0.Add(time.Duration(i) * time.Second)) {
			t.Errorf("arrival of %s: %v", m.ID, m.Arrival)
		}
		for _, r := range m.Recipients {
			if r.State != queue.Pending || r.Attempts != 0 || !r.NextAttempt.Equal(m.Arrival) {
				t.Errorf("recipient status of %s: %+v", m.ID, r)
			}
		}
	}
	if got := q2.Due(clock.Now(), 100); len(got) != len(sizes) {
		t.Errorf("Due after restart: %d messages, want %d", len(got), len(sizes))
	}
}

func TestEnvelopeKeptExactly(t *testing.T) {
	q := openQueue(t, openDir(t, t.TempDir()), options(newClock()))
	env := envelope(`"odd local"@example.net`, "Ünïcödé@bücher.example", "MiXeD.CaSe+tag@Example.NET", "x&y<z>@example.org")
	env.From = ""
	id := enqueue(t, q, env, []byte("hi\r\n"))
	m := checkMessage(t, q, id, env, []byte("hi\r\n"))
	if m.Envelope.To[0].Addr != `"odd local"@example.net` || m.Envelope.To[3].Addr != "x&y<z>@example.org" {
		t.Errorf("addresses changed: %q", m.Envelope.To)
	}
}

func TestEnqueueRejects(t *testing.T) {
	fsys := openDir(t, t.TempDir())
	opts := options(newClock())
	opts.MaxBodyBytes = 1000
	q := openQueue(t, fsys, opts)
	ctx := context.Background()
	for name, env := range map[string]queue.Envelope{
		"no recipients":     {From: "a@example.com"},
		"invalid UTF-8":     envelope("a\xff@example.net"),
		"CR LF in address":  envelope("a@example.net\r\nX: y"),
		"NUL":               envelope("a\x00@example.net"),
		"bad BODY":          {From: "a@example.com", To: []queue.Rcpt{{Addr: "b@example.net"}}, Body: "9BIT"},
		"bad NOTIFY":        {From: "a@example.com", To: []queue.Rcpt{{Addr: "b@example.net", Notify: []string{"SOMETIMES"}}}},
		"too many rcpts":    envelope(slices.Repeat([]string{"a@example.net"}, queue.MaxRecipients+1)...),
		"long address":      envelope(strings.Repeat("a", 2000) + "@example.net"),
		"empty rcpt":        envelope(""),
		"control character": {From: "a\x1b@example.com", To: []queue.Rcpt{{Addr: "b@example.net"}}},
	} {
		if _, err := q.Enqueue(ctx, env, strings.NewReader("x")); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	env := envelope()
	env.Size = 0 // not declared
	_, err := q.Enqueue(ctx, env, bytes.NewReader(make([]byte, 1001)))
	wantErr(t, err, queue.ErrTooLarge)
	_, err = q.Enqueue(ctx, envelope(), strings.NewReader("x")) // SIZE=1234 declared
	wantErr(t, err, queue.ErrTooLarge)
	_, err = q.Enqueue(ctx, env, io.MultiReader(strings.NewReader("partial"), errReader{}))
	if err == nil {
		t.Fatal("Enqueue with a failing body reader succeeded")
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = q.Enqueue(canceled, env, strings.NewReader("x"))
	wantErr(t, err, context.Canceled)
	names, _ := fsys.ReadDirNames()
	if len(names) != 1 || names[0] != "lock" {
		t.Errorf("left behind: %q", names)
	}
	if s := q.Stats(); s.Messages != 0 || s.Enqueued != 0 {
		t.Errorf("stats after refusals: %+v", s)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func TestUpdatesPersistAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	opts := options(clock)
	opts.Retry = queue.Retry{Delays: []time.Duration{time.Minute, 10 * time.Minute}}
	q := openQueue(t, openDir(t, dir), opts)
	ctx := context.Background()
	id := enqueue(t, q, envelope("a@example.net", "b@example.net", "c@example.net", "d@example.net"), body(1, 500))

	l := mustLease(t, q, id)
	if _, err := q.Lease(ctx, id); !errors.Is(err, queue.ErrBusy) {
		t.Fatalf("second Lease: %v, want ErrBusy", err)
	}
	if due := q.Due(clock.Now(), 10); len(due) != 0 {
		t.Fatalf("leased message is due: %v", due)
	}
	clock.Add(time.Minute)
	m, err := l.Update(ctx, queue.Attempt{Results: []queue.Result{
		{Recipient: 0, State: queue.Delivered, Reply: ok250},
		{Recipient: 1, State: queue.Failed, Reply: perm550},
		{Recipient: 2, State: queue.Pending, Reply: temp451},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Pending(); !slices.Equal(got, []int{2, 3}) {
		t.Errorf("pending after update: %v", got)
	}
	l.Close()
	want := m.Recipients
	if want[2].NextAttempt != t0.Add(2*time.Minute) || want[2].Attempts != 1 || want[2].Reply != temp451 {
		t.Errorf("deferred recipient: %+v", want[2])
	}
	// Recipient 3 was not attempted: still due at arrival.
	if due := q.Due(clock.Now(), 10); !slices.Equal(due, []queue.ID{id}) {
		t.Errorf("Due: %v", due)
	}
	if err := q.Hold(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}

	q2 := openQueue(t, openDir(t, dir), opts)
	got, err := q2.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Recipients, want) || !got.Held {
		t.Fatalf("after restart:\n got %+v held=%v\nwant %+v", got.Recipients, got.Held, want)
	}
	if due := q2.Due(clock.Now(), 10); len(due) != 0 {
		t.Errorf("held message is due: %v", due)
	}
	if _, err := q2.Lease(ctx, id); !errors.Is(err, queue.ErrHeld) {
		t.Errorf("Lease of held message: %v", err)
	}
	if err := q2.Release(ctx, id); err != nil {
		t.Fatal(err)
	}
	// The rest delivered: the message leaves the queue, for good.
	l = mustLease(t, q2, id)
	m, err = l.Update(ctx, queue.Attempt{Results: []queue.Result{
		{Recipient: 0, State: queue.Failed, Reply: perm550}, // final already: ignored
		{Recipient: 2, State: queue.Delivered, Reply: ok250},
		{Recipient: 3, State: queue.Delivered, Reply: ok250},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if m.Recipients[0].State != queue.Delivered || len(m.Pending()) != 0 {
		t.Errorf("final state: %+v", m.Recipients)
	}
	l.Close()
	if _, err := q2.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("completed message still there: %v", err)
	}
	closeQueue(t, q2)
	// The lock, and the segment written last: the one before is removed
	// once it holds nothing live.
	entries, _ := os.ReadDir(dir)
	if len(entries) != 2 || !strings.HasSuffix(entries[0].Name(), ".seg") {
		t.Errorf("spool after completion: %v", entries)
	}
	q3 := openQueue(t, openDir(t, dir), opts)
	if _, err := q3.Get(ctx, id); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("completed message back after a restart: %v", err)
	}
}

func TestUpdateRejectsBadResults(t *testing.T) {
	q := openQueue(t, openDir(t, t.TempDir()), options(newClock()))
	ctx := context.Background()
	id := enqueue(t, q, envelope("a@example.net", "b@example.net"), body(1, 10))
	l := mustLease(t, q, id)
	defer l.Close()
	for name, res := range map[string][]queue.Result{
		"index out of range":    {{Recipient: 2, State: queue.Delivered}},
		"negative index":        {{Recipient: -1, State: queue.Delivered}},
		"twice":                 {{Recipient: 0, State: queue.Delivered}, {Recipient: 0, State: queue.Failed}},
		"bad state":             {{Recipient: 0, State: queue.State(9)}},
		"no attempt, no time":   {{Recipient: 0, State: queue.Pending, NoAttempt: true}},
		"no attempt, delivered": {{Recipient: 0, State: queue.Delivered, NoAttempt: true, NotBefore: t0.Add(time.Hour)}},
		"not before, failed":    {{Recipient: 0, State: queue.Failed, NotBefore: t0.Add(time.Hour)}},
	} {
		if _, err := l.Update(ctx, queue.Attempt{Results: res}); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// A reply from the network is stored made safe.
	m, err := l.Update(ctx, queue.Attempt{Results: []queue.Result{{Recipient: 0, State: queue.Pending,
		Reply: queue.Reply{Code: 999, Enhanced: "4.x.1", Text: "bad\r\nbytes\xff" + strings.Repeat("y", 600)}}}})
	if err != nil {
		t.Fatal(err)
	}
	r := m.Recipients[0].Reply
	if r.Code != 0 || r.Enhanced != "" || len(r.Text) > 512 || strings.ContainsAny(r.Text, "\r\n") || !strings.HasPrefix(r.Text, "bad  bytes?") {
		t.Errorf("stored reply: %+v", r)
	}
}

func TestLifetimeFromArrival(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	opts := options(clock)
	opts.Retry = queue.Retry{Delays: []time.Duration{time.Hour}}
	q := openQueue(t, openDir(t, dir), opts)
	ctx := context.Background()
	id := enqueue(t, q, envelope("a@example.net", "b@example.net"), body(1, 100))
	lifetime := 5 * time.Hour

	defer1 := func(q *queue.Queue, rcpt int) queue.RecipientStatus {
		t.Helper()
		l := mustLease(t, q, id)
		defer l.Close()
		m, err := l.Update(ctx, queue.Attempt{Lifetime: lifetime, Results: []queue.Result{{Recipient: rcpt, State: queue.Pending, Reply: temp451}}})
		if err != nil {
			t.Fatal(err)
		}
		return m.Recipients[rcpt]
	}
	clock.Add(3 * time.Hour)
	if s := defer1(q, 0); s.NextAttempt != t0.Add(4*time.Hour) {
		t.Errorf("next attempt %v, want arrival+4h", s.NextAttempt)
	}
	// A restart does not restart the lifetime.
	closeQueue(t, q)
	q = openQueue(t, openDir(t, dir), opts)
	clock.Add(90 * time.Minute) // arrival + 4h30m: one more hour would pass the lifetime
	if s := defer1(q, 0); s.State != queue.Pending || s.NextAttempt != t0.Add(lifetime) {
		t.Errorf("last retry %+v, want at arrival+lifetime", s)
	}
	m, _ := q.Get(ctx, id)
	if m.Expired(lifetime, clock.Now()) || !m.Expired(lifetime, t0.Add(lifetime)) {
		t.Error("Message.Expired does not count from arrival")
	}
	clock.Set(t0.Add(lifetime))
	if s := defer1(q, 0); s.State != queue.Expired || s.Attempts != 3 || s.Reply != temp451 {
		t.Errorf("at the end of the lifetime: %+v, want expired after 3 attempts", s)
	}
	// The lifetime comes from the caller at each attempt: a longer one now
	// (the table changed) keeps the other recipient going.
	lifetime = 10 * time.Hour
	if s := defer1(q, 1); s.State != queue.Pending || s.NextAttempt != t0.Add(6*time.Hour) {
		t.Errorf("with a longer lifetime: %+v", s)
	}
}

func TestDueOrderAndNextDue(t *testing.T) {
	clock := newClock()
	q := openQueue(t, openDir(t, t.TempDir()), options(clock))
	ctx := context.Background()
	if _, ok := q.NextDue(); ok {
		t.Fatal("NextDue on an empty queue")
	}
	var all []queue.ID
	for i := range 5 {
		all = append(all, enqueue(t, q, envelope(), body(i, 10)))
		clock.Add(time.Second)
	}
	select {
	case <-q.Changed():
	default:
		t.Error("Enqueue did not signal Changed")
	}
	if got := q.Due(clock.Now(), 3); !slices.Equal(got, all[:3]) {
		t.Errorf("Due(3) = %v, want the three oldest %v", got, all[:3])
	}
	// Defer the oldest: it goes to the back.
	l := mustLease(t, q, all[0])
	if _, err := l.Update(ctx, queue.Attempt{Results: []queue.Result{{Recipient: 0, State: queue.Pending}}}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if got := q.Due(clock.Now(), 10); !slices.Equal(got, all[1:]) {
		t.Errorf("Due = %v, want %v", got, all[1:])
	}
	if next, _ := q.NextDue(); !next.Equal(t0.Add(time.Second)) {
		t.Errorf("NextDue = %v", next)
	}
	for _, id := range all[1:] {
		if err := q.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	next, ok := q.NextDue()
	if !ok || next.Before(clock.Now().Add(54*time.Second)) || next.After(clock.Now().Add(66*time.Second)) {
		t.Errorf("NextDue = %v %v, want about a minute after the attempt", next, ok)
	}
	n, err := q.Flush(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Flush = %d, %v", n, err)
	}
	if got := q.Due(clock.Now(), 10); !slices.Equal(got, all[:1]) {
		t.Errorf("Due after Flush = %v", got)
	}
	if _, err := q.Flush(ctx, "0000000000000000000000000z"); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("Flush of unknown ID: %v", err)
	}
	if err := q.Delete(ctx, all[1]); !errors.Is(err, queue.ErrNotFound) {
		t.Errorf("second Delete: %v", err)
	}
	if s := q.Stats(); s.Messages != 1 || s.Enqueued != 5 {
		t.Errorf("stats: %+v", s)
	}
}

func TestDeleteDuringLease(t *testing.T) {
	q := openQueue(t, openDir(t, t.TempDir()), options(newClock()))
	ctx := context.Background()
	b := body(1, 100<<10)
	id := enqueue(t, q, envelope(), b)
	l := mustLease(t, q, id)
	r, err := l.Body(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer closeQuietly(r)
	if err := q.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	// The delivery under way still reads the whole body...
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, b) {
		t.Errorf("body after Delete: %d bytes, %v", len(got), err)
	}
	// ...and learns at Update that the message is gone.
	_, err = l.Update(ctx, queue.Attempt{Results: []queue.Result{{Recipient: 0, State: queue.Delivered}}})
	wantErr(t, err, queue.ErrNotFound)
	l.Close()
}

func TestListPages(t *testing.T) {
	clock := newClock()
	q := openQueue(t, openDir(t, t.TempDir()), options(clock))
	var all []queue.ID
	for i := range 7 {
		all = append(all, enqueue(t, q, envelope(), body(i, 10)))
		clock.Add(time.Millisecond)
	}
	var got []queue.ID
	var after queue.ID
	for {
		page, err := q.List(context.Background(), after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		got = append(got, ids(page)...)
		after = page[len(page)-1].ID
	}
	if !slices.Equal(got, all) {
		t.Errorf("pages = %v, want %v in arrival order", got, all)
	}
}

func TestExportImport(t *testing.T) {
	clock := newClock()
	ctx := context.Background()
	src := openQueue(t, openDir(t, t.TempDir()), options(clock))
	env := envelope("a@example.net", "b@example.net", "c@example.net")
	env.Tag = "campaign-7" // a hand-off keeps the notifications' tag
	b := body(7, 200<<10)
	id := enqueue(t, src, env, b)
	clock.Add(time.Hour)
	l := mustLease(t, src, id)
	m, err := l.Update(ctx, queue.Attempt{Results: []queue.Result{
		{Recipient: 0, State: queue.Delivered, Reply: ok250},
		{Recipient: 1, State: queue.Pending, Reply: temp451},
	}})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	var rec bytes.Buffer
	if err := src.Export(ctx, id, &rec); err != nil {
		t.Fatal(err)
	}

	dst := openQueue(t, openDir(t, t.TempDir()), options(clock))
	got, err := dst.Import(ctx, bytes.NewReader(rec.Bytes()))
	if err != nil || got != id {
		t.Fatalf("Import = %s, %v; want %s", got, err, id)
	}
	im := checkMessage(t, dst, id, env, b)
	if !im.Arrival.Equal(t0) || !slices.Equal(im.Recipients, m.Recipients) {
		t.Errorf("imported state:\n got %v %+v\nwant %v %+v", im.Arrival, im.Recipients, t0, m.Recipients)
	}
	again, err := dst.Import(ctx, bytes.NewReader(rec.Bytes()))
	wantErr(t, err, queue.ErrExists)
	if again != id {
		t.Errorf("second Import named %q, want the ID %s it has", again, id)
	}

	// Any damage is refused and leaves nothing behind.
	third := openDir(t, t.TempDir())
	q3 := openQueue(t, third, options(clock))
	for _, at := range []int{0, 5, 22, 30, rec.Len() / 2, rec.Len() - 3} {
		bad := bytes.Clone(rec.Bytes())
		bad[at] ^= 0x20
		if _, err := q3.Import(ctx, bytes.NewReader(bad)); !errors.Is(err, queue.ErrCorrupt) {
			t.Errorf("import with byte %d flipped: %v, want ErrCorrupt", at, err)
		}
	}
	for _, n := range []int{0, 10, 100, rec.Len() - 1} {
		if _, err := q3.Import(ctx, bytes.NewReader(rec.Bytes()[:n])); !errors.Is(err, queue.ErrCorrupt) {
			t.Errorf("import cut at %d: %v, want ErrCorrupt", n, err)
		}
	}
	if names, _ := third.ReadDirNames(); len(names) != 1 {
		t.Errorf("failed imports left %q", names)
	}
}

func TestCorruptFileSetAside(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	q := openQueue(t, openDir(t, dir), fileOptions(clock))
	good := enqueue(t, q, envelope(), body(1, 1000))
	bad := enqueue(t, q, envelope(), body(2, 1000))
	cut := enqueue(t, q, envelope(), body(3, 1000))
	closeQueue(t, q)
	flip := func(id queue.ID, at int64) {
		p := filepath.Join(dir, string(id)+".msg")
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if at < 0 {
			at += int64(len(data))
		}
		data[at] ^= 1
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	flip(bad, 40) // in the header JSON
	if err := os.Truncate(filepath.Join(dir, string(cut)+".msg"), 500); err != nil {
		t.Fatal(err)
	}
	// A file named like an uncommitted write is removed.
	if err := os.WriteFile(filepath.Join(dir, string(newID(t))+".tmp"), []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}

	q2 := openQueue(t, openDir(t, dir), fileOptions(clock))
	if got := ids(listAll(t, q2)); !slices.Equal(got, []queue.ID{good}) {
		t.Errorf("loaded %v, want only %s", got, good)
	}
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	want := []string{string(bad) + ".corrupt", string(cut) + ".corrupt", string(good) + ".msg", "lock"}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Errorf("spool after recovery: %q, want %q", names, want)
	}

	// A body damaged after recovery is caught when read.
	flip(good, -10)
	r, err := q2.Body(context.Background(), good)
	if err != nil {
		t.Fatal(err)
	}
	defer closeQuietly(r)
	_, err = io.ReadAll(r)
	wantErr(t, err, queue.ErrCorrupt)
}

// newID enqueues into a scratch queue to get a well-formed ID.
func newID(t *testing.T) queue.ID {
	q := openQueue(t, openDir(t, t.TempDir()), options(newClock()))
	return enqueue(t, q, envelope(), nil)
}

func TestTornJournalTail(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	q := openQueue(t, openDir(t, dir), fileOptions(clock))
	ctx := context.Background()
	id := enqueue(t, q, envelope("a@example.net", "b@example.net"), body(1, 1000))
	l := mustLease(t, q, id)
	m, err := l.Update(ctx, queue.Attempt{Results: []queue.Result{{Recipient: 0, State: queue.Delivered, Reply: ok250}}})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	closeQueue(t, q)
	// A crash in the middle of the next record's write.
	p := filepath.Join(dir, string(id)+".msg")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0, 0, 1, 0, '{', '"', 't'}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	q2 := openQueue(t, openDir(t, dir), fileOptions(clock))
	got, err := q2.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got.Recipients, m.Recipients) {
		t.Fatalf("state with a torn tail: %+v, want %+v", got.Recipients, m.Recipients)
	}
	// The next record goes over the torn one and is read back.
	l = mustLease(t, q2, id)
	m, err = l.Update(ctx, queue.Attempt{Results: []queue.Result{{Recipient: 1, State: queue.Pending, Reply: temp451}}})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	closeQueue(t, q2)
	q3 := openQueue(t, openDir(t, dir), fileOptions(clock))
	got, err = q3.Get(ctx, id)
	if err != nil || !slices.Equal(got.Recipients, m.Recipients) {
		t.Fatalf("after the torn tail was overwritten: %+v, %v; want %+v", got.Recipients, err, m.Recipients)
	}
}

func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	opts := fileOptions(clock)
	opts.CompactBytes = 2 << 10
	q := openQueue(t, openDir(t, dir), opts)
	ctx := context.Background()
	b := body(1, 10000)
	rcpts := []string{"a@example.net", "b@example.net", "c@example.net"}
	id := enqueue(t, q, envelope(rcpts...), b)
	var m queue.Message
	for i := range 200 {
		clock.Add(time.Minute)
		l := mustLease(t, q, id)
		var err error
		m, err = l.Update(ctx, queue.Attempt{Lifetime: 1000 * time.Hour, Results: []queue.Result{
			{Recipient: i % 3, State: queue.Pending, Reply: queue.Reply{Code: 451, Text: strings.Repeat("z", i)}},
		}})
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	st, err := os.Stat(filepath.Join(dir, string(id)+".msg"))
	if err != nil {
		t.Fatal(err)
	}
	if limit := int64(len(b)) + 8<<10; st.Size() > limit {
		t.Errorf("file of %d bytes after 200 updates: journal not compacted", st.Size())
	}
	closeQueue(t, q)
	q2 := openQueue(t, openDir(t, dir), opts)
	got := checkMessage(t, q2, id, envelope(rcpts...), b)
	if !slices.Equal(got.Recipients, m.Recipients) {
		t.Errorf("state after compaction and restart:\n got %+v\nwant %+v", got.Recipients, m.Recipients)
	}
	if got.Recipients[0].Attempts != 67 {
		t.Errorf("attempts %d, want 67", got.Recipients[0].Attempts)
	}
}

func TestSpoolLocked(t *testing.T) {
	dir := t.TempDir()
	openQueue(t, openDir(t, dir), options(newClock()))
	_, err := queue.Open(context.Background(), openDir(t, dir), options(newClock()))
	wantErr(t, err, queue.ErrLocked)
}

func TestClosed(t *testing.T) {
	q := openQueue(t, openDir(t, t.TempDir()), options(newClock()))
	id := enqueue(t, q, envelope(), nil)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := q.Enqueue(context.Background(), envelope(), nil)
	wantErr(t, err, queue.ErrClosed)
	_, err = q.Lease(context.Background(), id)
	wantErr(t, err, queue.ErrClosed)
	if err := q.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestParseID(t *testing.T) {
	for _, s := range []string{"", "abc", "../../etc/passwd000000000", "0000000000000000000000000i", "9000000000000000000000000a", "0000000000000000000000000A"} {
		if _, err := queue.ParseID(s); !errors.Is(err, queue.ErrInvalid) {
			t.Errorf("ParseID(%q) = %v", s, err)
		}
	}
}
