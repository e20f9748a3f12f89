package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/testenv"
)

// segOptions returns options with small segments, so that a few messages
// roll them, and reclamation has old ones to remove and compact.
func segOptions(clock interface{ Now() time.Time }) queue.Options {
	o := queue.Options{Clock: clock, Rand: rand.New(rand.NewPCG(1, 2)), MinFreeBytes: 1, SegmentBytes: 4000}
	o.Retry = queue.Retry{Delays: []time.Duration{time.Minute}}
	return o
}

func segments(fsys *queuetest.FS) []string {
	var out []string
	for _, n := range fsys.Names() {
		if strings.HasSuffix(n, ".seg") {
			out = append(out, n)
		}
	}
	return out
}

func attempt(states ...queue.State) queue.Attempt {
	var a queue.Attempt
	for i, s := range states {
		reply := ok250
		switch s {
		case queue.Pending:
			reply = temp451
		case queue.Failed:
			reply = perm550
		}
		a.Results = append(a.Results, queue.Result{Recipient: i, State: s, Reply: reply})
	}
	return a
}

// TestSegmentReclaim: segments roll at their size; a segment whose
// messages are all finished is removed, oldest first; a long-deferred
// message is copied forward so that the segments behind it can go; a
// lease reads its body across the copy and the removal; a restart finds
// every message with its state and nothing finished.
func TestSegmentReclaim(t *testing.T) {
	ctx := context.Background()
	fsys := queuetest.New()
	clock := newClock()
	q := openQueue(t, fsys, segOptions(clock))
	env := envelope("a@example.net", "b@example.net")
	deferred := map[queue.ID][]byte{}
	var leased *queue.Lease
	var leasedBody []byte
	for i := range 60 {
		b := body(i, 1000)
		id := enqueue(t, q, env, b)
		l := mustLease(t, q, id)
		if i%20 == 0 {
			// Deferred for an hour: it stays while the others go.
			if _, err := l.Update(ctx, attempt(queue.Pending, queue.Delivered)); err != nil {
				t.Fatal(err)
			}
			deferred[id] = b
			if i == 0 {
				leased, leasedBody = l, b // kept, to read across compaction
				continue
			}
		} else if _, err := l.Update(ctx, attempt(queue.Delivered, queue.Delivered)); err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	segs := segments(fsys)
	if len(segs) > 4 {
		t.Errorf("60 messages of 1 KB in segments of 4000 bytes, 3 kept: %d segments left %q", len(segs), segs)
	}
	if segs[0] == "0000000000000000.seg" {
		t.Errorf("the first segment, whose message is deferred, was never compacted: %q", segs)
	}
	r, err := leased.Body(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	closeQuietly(r)
	if err != nil || !bytes.Equal(got, leasedBody) {
		t.Fatalf("leased body after compaction: %d bytes, %v", len(got), err)
	}
	leased.Close()
	want := map[queue.ID]queue.Message{}
	for id, b := range deferred {
		want[id] = checkMessage(t, q, id, env, b)
	}
	if n := q.Stats().Messages; n != len(deferred) {
		t.Fatalf("%d messages queued, want the %d deferred", n, len(deferred))
	}
	closeQueue(t, q)

	q = openQueue(t, fsys, segOptions(clock))
	if n := q.Stats().Messages; n != len(deferred) {
		t.Fatalf("after a restart %d messages, want the %d deferred", n, len(deferred))
	}
	for id, b := range deferred {
		m := checkMessage(t, q, id, env, b)
		if !slices.Equal(m.Recipients, want[id].Recipients) {
			t.Errorf("%s after a restart: %+v, want %+v", id, m.Recipients, want[id].Recipients)
		}
	}
}

// TestSegmentStorageErrors: any operation of an Enqueue into a segment
// that fails makes it fail, and the message is not queued in this
// process; the next Enqueue goes to a new segment and works, and what was
// queued before stays.
func TestSegmentStorageErrors(t *testing.T) {
	ctx := context.Background()
	eio := syscall.EIO
	for n := 1; ; n++ {
		fsys := queuetest.New()
		clock := newClock()
		q := openQueue(t, fsys, options(clock))
		first := enqueue(t, q, envelope(), body(0, 100))
		base := fsys.Ops()
		var failed queuetest.Op
		fsys.Fail(func(op queuetest.Op) error {
			if op.N == base+n {
				failed = op
				return eio
			}
			return nil
		})
		_, err := q.Enqueue(ctx, envelope(), bytes.NewReader(body(1, 100)))
		fsys.Fail(nil)
		if failed.N == 0 {
			if err != nil {
				t.Fatal(err)
			}
			return
		}
		if !errors.Is(err, eio) {
			t.Errorf("%s failed: Enqueue error %v", failed.Kind, err)
		}
		if got := ids(listAll(t, q)); !slices.Equal(got, []queue.ID{first}) || len(q.Due(clock.Now(), 10)) != 1 {
			t.Errorf("%s failed: queued %v", failed.Kind, got)
		}
		third := enqueue(t, q, envelope(), body(2, 100))
		checkMessage(t, q, first, envelope(), body(0, 100))
		closeQueue(t, q)
		q = openQueue(t, fsys, options(clock))
		checkMessage(t, q, first, envelope(), body(0, 100))
		checkMessage(t, q, third, envelope(), body(2, 100))
		closeQueue(t, q)
	}
}

// TestSegmentDiskFull: running out of space at any byte of an Enqueue
// into a segment fails it with ErrNoSpace (452 4.3.1); once space is
// back, Enqueue works, and a crash keeps what was acknowledged.
func TestSegmentDiskFull(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	fsys := queuetest.New()
	q := openQueue(t, fsys, options(clock))
	first := enqueue(t, q, envelope(), body(0, 3000))
	used := int64(len(mustRead(t, fsys, segments(fsys)[0])))
	b := body(1, 20000)
	env := envelope()
	env.Size = 0
	var second queue.ID
	for room := int64(0); second == ""; room += 997 {
		// Failed segments stay (sealed) until reclaimed: count them.
		var all int64
		for _, s := range segments(fsys) {
			all += int64(len(mustRead(t, fsys, s)))
		}
		fsys.SetCapacity(all + room)
		id, err := q.Enqueue(ctx, env, bytes.NewReader(b))
		if err == nil {
			second = id
			break
		}
		if !errors.Is(err, queue.ErrNoSpace) {
			t.Fatalf("%d bytes free: Enqueue error %v, want ErrNoSpace", room, err)
		}
		if n := q.Stats().Messages; n != 1 {
			t.Fatalf("%d bytes free: %d messages queued after a failed Enqueue", room, n)
		}
	}
	_ = used
	fsys.Crash()
	closeQueue(t, q)
	q = openQueue(t, fsys, options(clock))
	checkMessage(t, q, first, envelope(), body(0, 3000))
	checkMessage(t, q, second, env, b)
}

// TestSpoolOfFileVersion: a spool written before segments (a message file
// each) is kept whole by a queue that writes segments: every message with
// its state, deliverable, and its file removed once it is finished.
func TestSpoolOfFileVersion(t *testing.T) {
	ctx := context.Background()
	fsys := queuetest.New()
	clock := newClock()
	old := openQueue(t, fsys, fileOptions(clock))
	env := envelope("a@example.net", "b@example.net")
	var idsOld []queue.ID
	for i := range 3 {
		idsOld = append(idsOld, enqueue(t, old, env, body(i, 2000)))
	}
	l := mustLease(t, old, idsOld[0])
	if _, err := l.Update(ctx, attempt(queue.Delivered, queue.Pending)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := old.Hold(ctx, idsOld[1]); err != nil {
		t.Fatal(err)
	}
	before := map[queue.ID]queue.Message{}
	for _, m := range listAll(t, old) {
		before[m.ID] = m
	}
	fsys.Crash()
	closeQueue(t, old)

	q := openQueue(t, fsys, options(clock))
	for i, id := range idsOld {
		m := checkMessage(t, q, id, env, body(i, 2000))
		if !slices.Equal(m.Recipients, before[id].Recipients) || m.Held != before[id].Held {
			t.Errorf("%s: %+v held=%v, want %+v held=%v", id, m.Recipients, m.Held, before[id].Recipients, before[id].Held)
		}
	}
	fresh := enqueue(t, q, env, body(9, 2000))
	if len(segments(fsys)) != 1 {
		t.Errorf("new message not in a segment: %q", fsys.Names())
	}
	if err := q.Release(ctx, idsOld[1]); err != nil {
		t.Fatal(err)
	}
	clock.Add(time.Hour)
	for _, id := range append(idsOld, fresh) {
		l := mustLease(t, q, id)
		if _, err := l.Update(ctx, attempt(queue.Delivered, queue.Delivered)); err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	for _, n := range fsys.Names() {
		if strings.HasSuffix(n, ".msg") {
			t.Errorf("finished message file left: %s", n)
		}
	}
	if n := q.Stats().Messages; n != 0 {
		t.Errorf("%d messages left", n)
	}
}

// TestSegmentExportImport: a message in a segment exports to the
// self-contained format of a message file, which a queue storing files
// imports, and back.
func TestSegmentExportImport(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	seg := openQueue(t, queuetest.New(), options(clock))
	files := openQueue(t, queuetest.New(), fileOptions(clock))
	env := envelope("a@example.net", "b@example.net")
	b := body(1, 5000)
	id := enqueue(t, seg, env, b)
	l := mustLease(t, seg, id)
	want, err := l.Update(ctx, attempt(queue.Delivered, queue.Pending))
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	for _, hop := range []struct{ from, to *queue.Queue }{{seg, files}, {files, seg}} {
		var buf bytes.Buffer
		if err := hop.from.Export(ctx, id, &buf); err != nil {
			t.Fatal(err)
		}
		if err := hop.from.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		got, err := hop.to.Import(ctx, &buf)
		if err != nil || got != id {
			t.Fatalf("Import: %s, %v", got, err)
		}
		m := checkMessage(t, hop.to, id, env, b)
		if !slices.Equal(m.Recipients, want.Recipients) || !m.Arrival.Equal(want.Arrival) {
			t.Errorf("imported: %+v, want %+v", m, want)
		}
	}
}

// TestSegmentCorruptBody: a body that does not match its CRC is reported
// when read, as ErrCorrupt.
func TestSegmentCorruptBody(t *testing.T) {
	fsys := queuetest.New()
	clock := newClock()
	q := openQueue(t, fsys, options(clock))
	b := body(1, 3000)
	id := enqueue(t, q, envelope(), b)
	name := segments(fsys)[0]
	data := mustRead(t, fsys, name)
	i := bytes.Index(data, b)
	f, err := fsys.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{data[i+100] ^ 1}, int64(i+100)); err != nil {
		t.Fatal(err)
	}
	closeQuietly(f)
	r, err := q.Body(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(r)
	closeQuietly(r)
	wantErr(t, err, queue.ErrCorrupt)
	closeQueue(t, q)
	// At recovery the record fails its CRC: the segment is read up to it.
	q = openQueue(t, fsys, options(clock))
	if n := q.Stats().Messages; n != 0 {
		t.Fatalf("corrupt record indexed: %d messages", n)
	}
}

// TestSegmentDamagedRecordSkipped: a segment that nothing appends to any
// more is marked whole (fsynced, then marked: at Close, and by the flush
// loop once it is sealed). A record damaged in such a segment (a bit
// flipped on the disk, in its body or in its length, which no longer says
// where the next record begins) loses that message only: the messages
// after it in the segment are read. In a segment without the mark, which a
// crash may have torn, the replay still ends at the first bad record.
func TestSegmentDamagedRecordSkipped(t *testing.T) {
	for _, marked := range []bool{true, false} {
		for _, where := range []string{"body", "length"} {
			t.Run(fmt.Sprintf("marked=%v/%s", marked, where), func(t *testing.T) {
				fsys := queuetest.New()
				clock := newClock()
				q := openQueue(t, fsys, options(clock))
				env := envelope()
				var ids []queue.ID
				var bodies [][]byte
				for i := range 4 {
					b := body(i, 1000)
					ids, bodies = append(ids, enqueue(t, q, env, b)), append(bodies, b)
				}
				closeQueue(t, q)
				name := segments(fsys)[0]
				data := mustRead(t, fsys, name)
				if !marked {
					// As a crash before the mark leaves it.
					data = data[:len(data)-17]
				}
				switch where {
				case "body":
					data[bytes.Index(data, bodies[1])+len(bodies[1])/2] ^= 1
				case "length":
					// The frame's length: 13 bytes before the header
					// JSON (length, kind, JSON length, body CRC).
					js := bytes.Index(data, []byte(`{"id":"`+string(ids[1])+`"`))
					data[js-13] = 0xff // out of bounds
				}
				fsys.WriteFile(name, data)

				q = openQueue(t, fsys, options(clock))
				defer closeQueue(t, q)
				checkMessage(t, q, ids[0], env, bodies[0])
				if _, err := q.Get(context.Background(), ids[1]); err == nil {
					t.Error("the damaged message was read back")
				}
				if want := map[bool]int{true: 1, false: 0}[marked]; q.Stats().Damaged != want {
					t.Errorf("Stats.Damaged %d, want %d (a torn tail is no damage)", q.Stats().Damaged, want)
				}
				for _, i := range []int{2, 3} {
					_, err := q.Get(context.Background(), ids[i])
					switch {
					case marked && err != nil:
						t.Fatalf("message %d, after the damaged one in a segment marked whole: %v", i, err)
					case marked:
						checkMessage(t, q, ids[i], env, bodies[i])
					case err == nil:
						t.Fatal("a segment without the mark was read past a bad record")
					}
				}
			})
		}
	}
}

// TestSegmentMarkedWhenSealed: the flush loop marks a segment once it is
// sealed and nothing appends to it, without waiting for Close.
func TestSegmentMarkedWhenSealed(t *testing.T) {
	fsys := queuetest.New()
	clock := newClock()
	q := openQueue(t, fsys, segOptions(clock))
	defer closeQueue(t, q)
	env := envelope()
	for i := range 6 {
		enqueue(t, q, env, body(i, 1000))
	}
	segs := segments(fsys)
	if len(segs) < 2 {
		t.Fatalf("6 messages of 1 KB in segments of 4000 bytes: segments %q", segs)
	}
	testenv.EventuallyTrue(t, "the sealed segment "+segs[0]+" is not marked whole", func() bool {
		d := mustRead(t, fsys, segs[0])
		return len(d) > 17 && d[len(d)-17+4] == 'W'
	})
	if d := mustRead(t, fsys, segs[len(segs)-1]); d[len(d)-17+4] == 'W' {
		t.Error("the active segment is marked whole while the queue is open")
	}
}

// TestCrashWorkload runs a workload over small segments (rolls, removals,
// copies forward) and crashes at each filesystem operation in turn. After
// recovery: every message whose Enqueue returned is there, intact, unless
// finished or deleted; every recipient has the status of the last Update
// that returned or of one that failed, except that a status set by an
// Update that only marked recipients delivered may be rolled back; the
// held flag is the last one set; a deleted message is gone; a message
// whose Enqueue failed is absent or intact and untouched.
func TestCrashWorkload(t *testing.T) {
	for _, tear := range []bool{false, true} {
		t.Run(fmt.Sprintf("tear=%v", tear), func(t *testing.T) {
			var total int
			for n := 1; ; n++ {
				if !runWorkload(t, n, tear) {
					total = n - 1
					break
				}
			}
			t.Logf("crashed at each of %d operations", total)
		})
	}
}

// wmsg is the model of one message of the workload.
type wmsg struct {
	id      queue.ID
	acked   bool // Enqueue returned its ID
	tried   bool // Enqueue called
	deleted bool
	delMay  bool // a Delete failed: it may have happened
	held    bool
	heldMay []bool // held values a failed Hold or Release may have left
	// hist holds each recipient's statuses in order; floor the first
	// index that may still be what recovery finds.
	hist  [][]queue.RecipientStatus
	floor []int
	extra [][]queue.RecipientStatus // statuses of an Update that failed
}

// runWorkload runs the workload with a crash at operation n and checks
// the recovery; it reports false when the workload ended before n.
func runWorkload(t *testing.T, n int, tear bool) bool {
	t.Helper()
	ctx := context.Background()
	fsys := queuetest.New()
	if tear {
		fsys.TearWrites(rand.New(rand.NewPCG(uint64(n), 3)))
	}
	clock := newClock()
	q := openQueue(t, fsys, segOptions(clock))
	fsys.CrashAt(n)
	const msgs = 14
	env := envelope("a@example.net", "b@example.net")
	model := make([]*wmsg, msgs)
	for i := range model {
		model[i] = &wmsg{}
	}
	failed := false
	enq := func(i int) {
		w := model[i]
		w.tried = true
		id, err := q.Enqueue(ctx, env, bytes.NewReader(body(i, 1000)))
		if err != nil {
			failed = true
			return
		}
		w.id, w.acked = id, true
		init := queue.RecipientStatus{State: queue.Pending, NextAttempt: clock.Now().UTC()}
		w.hist = [][]queue.RecipientStatus{{init}, {init}}
		w.floor = []int{0, 0}
		w.extra = make([][]queue.RecipientStatus, 2)
	}
	// run reports a's results for the recipients still pending.
	run := func(i int, all queue.Attempt) {
		w := model[i]
		if !w.acked || w.deleted {
			return
		}
		l, err := q.Lease(ctx, w.id)
		if errors.Is(err, queue.ErrNotFound) {
			return // finished
		}
		if err != nil {
			failed = true
			return
		}
		defer l.Close()
		before := l.Message()
		var a queue.Attempt
		for _, res := range all.Results {
			if before.Recipients[res.Recipient].State == queue.Pending {
				a.Results = append(a.Results, res)
			}
		}
		m, err := l.Update(ctx, a)
		if err != nil {
			// What it would have written: any status the recipient may
			// take next. The states are known, the times too.
			failed = true
			for _, res := range a.Results {
				w.extra[res.Recipient] = append(w.extra[res.Recipient], queue.RecipientStatus{State: res.State})
			}
			return
		}
		delivered := true
		for _, res := range a.Results {
			delivered = delivered && res.State == queue.Delivered
		}
		for _, res := range a.Results {
			r := res.Recipient
			w.hist[r] = append(w.hist[r], m.Recipients[r])
			if !delivered {
				w.floor[r] = len(w.hist[r]) - 1
			}
		}
	}
	update := func(i int, states ...queue.State) { run(i, attempt(states...)) }
	// postpone defers every recipient without attempt, as for a
	// suspended site: as durable as a deferral.
	postpone := func(i int) {
		var a queue.Attempt
		for r := range env.To {
			a.Results = append(a.Results, queue.Result{Recipient: r, State: queue.Pending, Reply: temp451,
				NotBefore: clock.Now().Add(time.Hour), NoAttempt: true})
		}
		run(i, a)
	}
	hold := func(i int, held bool) {
		w := model[i]
		if !w.acked || w.deleted {
			return
		}
		var err error
		if held {
			err = q.Hold(ctx, w.id)
		} else {
			err = q.Release(ctx, w.id)
		}
		switch {
		case errors.Is(err, queue.ErrNotFound):
		case err != nil:
			failed = true
			w.heldMay = append(w.heldMay, held)
		default:
			w.held = held
		}
	}
	del := func(i int) {
		w := model[i]
		if !w.acked || w.deleted {
			return
		}
		if err := q.Delete(ctx, w.id); err != nil {
			failed = true
			w.delMay = true
			return
		}
		w.deleted = true
	}
	steps := []func(){
		func() { enq(0) }, func() { enq(1) }, func() { enq(2) }, func() { enq(3) },
		func() { update(0, queue.Delivered, queue.Delivered) },
		func() { update(1, queue.Pending, queue.Delivered) },
		func() { hold(2, true) },
		func() { del(3) },
		func() { enq(4) }, func() { enq(5) }, func() { enq(6) },
		func() { update(4, queue.Delivered, queue.Pending) },
		func() { postpone(4) },
		func() { update(5, queue.Delivered, queue.Delivered) },
		func() { update(6, queue.Failed, queue.Delivered) },
		func() { enq(7) }, func() { enq(8) }, func() { enq(9) },
		func() { update(7, queue.Delivered, queue.Delivered) },
		func() { update(8, queue.Delivered, queue.Delivered) },
		func() { hold(2, false) },
		func() { clock.Add(2 * time.Minute) },
		func() { update(1, queue.Delivered, queue.Delivered) },
		func() { update(4, queue.Delivered, queue.Failed) },
		func() { enq(10) }, func() { enq(11) },
		func() { update(9, queue.Delivered, queue.Delivered) },
		func() { update(10, queue.Pending, queue.Pending) },
		func() { postpone(10) },
		func() { enq(12) }, func() { enq(13) },
		func() { update(11, queue.Delivered, queue.Delivered) },
		func() { update(12, queue.Delivered, queue.Delivered) },
	}
	for _, step := range steps {
		if failed {
			break
		}
		step()
	}
	crashed := fsys.Crashed()
	if !crashed {
		if failed {
			t.Fatalf("op %d: an operation failed without a crash", n)
		}
		// The workload must have rolled segments, and removed the first
		// (its held message copied forward).
		segs := segments(fsys)
		if len(segs) == 0 || segs[0] == "0000000000000000.seg" || segs[len(segs)-1] < "0000000000000004.seg" {
			t.Fatalf("the workload missed roll, copy or removal: %q", segs)
		}
		fsys.Crash()
	}
	fsys.Reboot()
	closeQueue(t, q)

	q2, err := queue.Open(ctx, fsys, segOptions(clock))
	if err != nil {
		t.Fatalf("op %d: recovery: %v", n, err)
	}
	defer closeQueue(t, q2)
	got := map[queue.ID]queue.Message{}
	for _, m := range listAll(t, q2) {
		got[m.ID] = m
	}
	for i, w := range model {
		if !w.tried {
			continue
		}
		if !w.acked {
			// Absent, or whole and untouched (a record that a torn
			// write kept whole).
			for id, m := range got {
				if m.Recipients[0].Attempts == 0 && bytes.Equal(readBody(t, q2, id), body(i, 1000)) {
					delete(got, id)
				}
			}
			continue
		}
		m, ok := got[w.id]
		delete(got, w.id)
		if !ok {
			if w.deleted || w.delMay || w.mayFinish() {
				continue
			}
			t.Fatalf("op %d: message %d (%s) lost", n, i, w.id)
		}
		if w.deleted {
			t.Fatalf("op %d: deleted message %d back", n, i)
		}
		if !bytes.Equal(readBody(t, q2, w.id), body(i, 1000)) {
			t.Fatalf("op %d: message %d body differs", n, i)
		}
		if m.Held != w.held && !slices.Contains(w.heldMay, m.Held) {
			t.Fatalf("op %d: message %d held=%v, want %v", n, i, m.Held, w.held)
		}
		for r, s := range m.Recipients {
			if !w.allowed(r, s) {
				t.Fatalf("op %d: message %d recipient %d: %+v; history %+v from %d, failed %+v",
					n, i, r, s, w.hist[r], w.floor[r], w.extra[r])
			}
		}
	}
	for id := range got {
		t.Fatalf("op %d: %s recovered, never acknowledged", n, id)
	}
	return crashed
}

// mayFinish reports whether every recipient's last status is final, or
// may be after an Update that failed.
func (w *wmsg) mayFinish() bool {
	for r, h := range w.hist {
		if h[len(h)-1].State.Final() {
			continue
		}
		if !slices.ContainsFunc(w.extra[r], func(s queue.RecipientStatus) bool { return s.State.Final() }) {
			return false
		}
	}
	return true
}

// allowed reports whether recovery may give recipient r status s.
func (w *wmsg) allowed(r int, s queue.RecipientStatus) bool {
	for _, h := range w.hist[r][w.floor[r]:] {
		if h == s {
			return true
		}
	}
	for _, x := range w.extra[r] {
		if x.State == s.State {
			return true
		}
	}
	return false
}

// TestSegmentBadMagic: a segment cut inside its magic or all zeros
// (started, never fsynced with a record) is removed at Open; one whose
// magic is wrong is set aside for a human, its number never used again.
func TestSegmentBadMagic(t *testing.T) {
	fsys := queuetest.New()
	fsys.WriteFile("0000000000000001.seg", []byte("PG"))
	fsys.WriteFile("0000000000000002.seg", make([]byte, 100))
	fsys.WriteFile("0000000000000003.seg", append(make([]byte, 8), "damaged at its start"...))
	q := openQueue(t, fsys, options(newClock()))
	enqueue(t, q, envelope(), body(1, 100))
	want := []string{"0000000000000003.seg.corrupt", "0000000000000004.seg"}
	if got := fsys.Names(); !slices.Equal(got, want) {
		t.Fatalf("spool %q, want %q", got, want)
	}
	if n := q.Stats().Damaged; n != 1 {
		t.Errorf("Stats.Damaged %d, want the one segment set aside (the empty ones were never acknowledged)", n)
	}
	closeQueue(t, q)
	q = openQueue(t, fsys, options(newClock()))
	if n := q.Stats().Messages; n != 1 {
		t.Errorf("%d messages after a restart", n)
	}
}
