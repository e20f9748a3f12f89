package queue_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/testenv"
)

// TestEnqueueDurableAtReturn: a power loss right after Enqueue returns
// keeps the message.
func TestEnqueueDurableAtReturn(t *testing.T) {
	fsys := queuetest.New()
	clock := newClock()
	q := openQueue(t, fsys, options(clock))
	want := map[queue.ID][]byte{}
	for i := range 5 {
		b := body(i, 1000*i)
		want[enqueue(t, q, envelope(), b)] = b
	}
	fsys.Crash()
	closeQueue(t, q)
	q2 := openQueue(t, fsys, options(clock))
	for id, b := range want {
		checkMessage(t, q2, id, envelope(), b)
	}
}

// TestCrashDuringEnqueue crashes at each filesystem operation of an
// Enqueue in turn, and after its last. After recovery the message is there
// and intact, or absent; absent only when Enqueue had not returned its ID.
// A message queued before is there in every case, and nothing partial is.
func TestCrashDuringEnqueue(t *testing.T) {
	for _, storage := range storages {
		for _, mode := range []string{"drop unsynced", "tear unsynced"} {
			t.Run(storage.name+"/"+mode, func(t *testing.T) {
				for _, size := range []int{0, 100, 200 << 10} {
					crashEachOp(t, storage, mode == "tear unsynced", size)
				}
			})
		}
	}
}

// storage is a way of storing messages: each in a file of its own (the
// format before segments, which large messages keep) or in segments.
type storage struct {
	name    string
	options func(*testenv.Clock) queue.Options
}

var storages = []storage{{"file", fileOptions}, {"segment", options}}

// checkNames checks what a storage leaves in the spool after recovery
// with msgs queued: one file per message, or segments only.
func checkNames(t *testing.T, st storage, fsys *queuetest.FS, msgs int, what string) {
	t.Helper()
	names := fsys.Names()
	if st.name == "file" {
		if len(names) != msgs {
			t.Fatalf("%s: left after recovery: %q", what, names)
		}
		return
	}
	for _, n := range names {
		if !strings.HasSuffix(n, ".seg") {
			t.Fatalf("%s: left after recovery: %q", what, names)
		}
	}
}

func crashEachOp(t *testing.T, st storage, tear bool, size int) {
	options := st.options
	ctx := context.Background()
	clock := newClock()
	before := body(0, 5000)
	b := body(1, size)
	outcomes := map[string]int{}
	for n := 1; ; n++ {
		fsys := queuetest.New()
		if tear {
			fsys.TearWrites(rand.New(rand.NewPCG(uint64(n), uint64(size))))
		}
		q, err := queue.Open(ctx, fsys, options(clock))
		if err != nil {
			t.Fatal(err)
		}
		first := enqueue(t, q, envelope(), before)
		fsys.CrashAt(n)
		id, enqErr := q.Enqueue(ctx, envelope("a@example.net", "b@example.net"), bytes.NewReader(b))
		crashed := fsys.Crashed()
		if crashed && enqErr == nil {
			t.Fatalf("op %d: Enqueue returned nil after the disk went away", n)
		}
		if !crashed {
			fsys.Crash() // right after it returned
		}
		fsys.Reboot()
		closeQueue(t, q)

		q2, err := queue.Open(ctx, fsys, options(clock))
		if err != nil {
			t.Fatalf("op %d: recovery: %v", n, err)
		}
		checkMessage(t, q2, first, envelope(), before)
		msgs := listAll(t, q2)
		switch {
		case enqErr == nil && len(msgs) != 2:
			t.Fatalf("op %d: Enqueue returned %s, recovered %v", n, id, ids(msgs))
		case len(msgs) == 2:
			second := msgs[0].ID
			if second == first {
				second = msgs[1].ID
			}
			checkMessage(t, q2, second, envelope("a@example.net", "b@example.net"), b)
			outcomes["recovered"]++
		case len(msgs) == 1:
			outcomes["absent"]++
		default:
			t.Fatalf("op %d: recovered %v", n, ids(msgs))
		}
		checkNames(t, st, fsys, len(msgs), fmt.Sprintf("op %d", n))
		closeQueue(t, q2)
		if !crashed {
			t.Logf("size %d: crashed at each of %d operations: %v", size, n-1, outcomes)
			if outcomes["absent"] == 0 {
				t.Error("no crash point lost the message: the crash points missed the commit")
			}
			return
		}
	}
}

// TestCrashDuringUpdate crashes at each operation of an Update (in a
// message file, one that also compacts the journal): the state after
// recovery is the one before the Update or the one it returned, and the
// latter whenever it returned, except that an Update that only marks
// recipients delivered may be rolled back in a segment: they are
// delivered again, never lost. The Update crashed defers, delivers, or
// defers without attempt (a suspended site), which is as durable as a
// deferral.
func TestCrashDuringUpdate(t *testing.T) {
	for _, st := range storages {
		for _, kind := range []string{"deferred", "delivered", "noattempt"} {
			if kind == "delivered" && st.name == "file" {
				continue
			}
			for _, tear := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/tear=%v", st.name, kind, tear), func(t *testing.T) { crashUpdate(t, st, kind, tear) })
			}
		}
	}
}

// k0 is the Update crashUpdate crashes in a segment: the fourth.
const k0 = 3

// crashUpdate crashes an Update of the given kind: "deferred",
// "delivered" (in a segment only) or "noattempt".
func crashUpdate(t *testing.T, st storage, kind string, tear bool) {
	ctx := context.Background()
	options := st.options
	delivered := kind == "delivered"
	// attempt is the i-th Update: deferrals, and the one crashed of the
	// kind tested.
	attempt := func(i int, crashed bool) queue.Attempt {
		res := queue.Result{Recipient: i % 2, State: queue.Pending, Reply: queue.Reply{Code: 451, Text: fmt.Sprint("attempt ", i)}}
		switch {
		case crashed && delivered:
			res.State = queue.Delivered
		case crashed && kind == "noattempt":
			res.NoAttempt, res.NotBefore = true, t0.Add(10*time.Hour)
		}
		return queue.Attempt{Results: []queue.Result{res}}
	}
	// setup queues a message and updates it the given number of times
	// (deferrals).
	setup := func(updates int) (*queuetest.FS, *queue.Queue, *testenv.Clock, queue.ID, queue.Message) {
		fsys := queuetest.New()
		clock := newClock()
		opts := options(clock)
		opts.CompactBytes = 1000
		q := openQueue(t, fsys, opts)
		id := enqueue(t, q, envelope("a@example.net", "b@example.net", "c@example.net"), body(1, 3000))
		var m queue.Message
		for i := range updates {
			clock.Add(time.Minute)
			l := mustLease(t, q, id)
			var err error
			if m, err = l.Update(ctx, attempt(i, false)); err != nil {
				t.Fatal(err)
			}
			l.Close()
		}
		if tear {
			fsys.TearWrites(rand.New(rand.NewPCG(7, 8)))
		}
		clock.Add(time.Minute)
		return fsys, q, clock, id, m
	}
	// k is the Update crashed: in a file, the first one of the kind that
	// compacts.
	k := k0
	var after queue.Message
	for k = range 20 {
		if st.name != "file" {
			k = k0
		}
		fsys, q, _, id, _ := setup(k)
		l := mustLease(t, q, id)
		syncs := fsys.Stats().DirSyncs
		var err error
		if after, err = l.Update(ctx, attempt(k, true)); err != nil {
			t.Fatal(err)
		}
		l.Close()
		if st.name != "file" || fsys.Stats().DirSyncs > syncs {
			break
		}
		if k == 19 {
			t.Fatal("no update compacted: the test misses the rewrite")
		}
	}

	for n := 1; ; n++ {
		fsys, q, clock, id, before := setup(k)
		l := mustLease(t, q, id)
		fsys.CrashAt(n)
		_, err := l.Update(ctx, attempt(k, true))
		crashed := fsys.Crashed()
		if !crashed {
			fsys.Crash()
		}
		fsys.Reboot()
		closeQueue(t, q)
		q2, err2 := queue.Open(ctx, fsys, options(clock))
		if err2 != nil {
			t.Fatalf("op %d: recovery: %v", n, err2)
		}
		got, err2 := q2.Get(ctx, id)
		if err2 != nil {
			t.Fatalf("op %d: message lost: %v", n, err2)
		}
		checkMessage(t, q2, id, envelope("a@example.net", "b@example.net", "c@example.net"), body(1, 3000))
		isAfter := slices.Equal(got.Recipients, after.Recipients)
		rolledBack := (err != nil || delivered) && slices.Equal(got.Recipients, before.Recipients)
		if !isAfter && !rolledBack {
			t.Fatalf("op %d (Update error %v): recovered %+v\nbefore %+v\nafter %+v", n, err, got.Recipients, before.Recipients, after.Recipients)
		}
		checkNames(t, st, fsys, 1, fmt.Sprintf("op %d", n))
		closeQueue(t, q2)
		if !crashed {
			t.Logf("crashed at each of %d operations", n-1)
			return
		}
	}
}

// TestGroupCommit: concurrent Enqueues share directory fsyncs, and in a
// segment file fsyncs too.
func TestGroupCommit(t *testing.T) {
	for _, st := range storages {
		t.Run(st.name, func(t *testing.T) { groupCommit(t, st) })
	}
}

func groupCommit(t *testing.T, mode storage) {
	fsys := queuetest.New()
	fsys.SetSyncLatency(20 * time.Millisecond)
	q := openQueue(t, fsys, mode.options(newClock()))
	const n = 64
	start := fsys.Stats()
	var wg sync.WaitGroup
	gate := make(chan struct{})
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			<-gate
			_, err := q.Enqueue(context.Background(), envelope(), bytes.NewReader(body(i, 2000)))
			errs <- err
		})
	}
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := fsys.Stats()
	files, dirs := st.FileSyncs-start.FileSyncs, st.DirSyncs-start.DirSyncs
	t.Logf("%d concurrent Enqueues: %d file fsyncs, %d directory fsyncs", n, files, dirs)
	switch {
	case mode.name == "file" && files != n:
		t.Errorf("%d file fsyncs, want one per message", files)
	case mode.name == "segment" && (files*4 > n || dirs != 1):
		// One directory fsync for the segment's name, file fsyncs
		// shared as directory fsyncs are.
		t.Errorf("%d segment fsyncs and %d directory fsyncs for %d messages: want at least 4 messages per fsync, one directory fsync", files, dirs, n)
	}
	// Without batching each Enqueue would fsync the directory (64); with
	// it, typically 2 or 3 (6 to 8 under -race on a busy machine).
	if dirs*4 > n {
		t.Errorf("%d directory fsyncs for %d messages: want at least 4 messages per fsync", dirs, n)
	}
	if s := q.Stats(); s.DirSyncs != uint64(st.DirSyncs) || s.Messages != n {
		t.Errorf("queue stats %+v disagree with the filesystem's %+v", s, st)
	}
}

// TestDiskFull: running out of space at any byte of an Enqueue fails it
// and leaves nothing; the free-space check turns mail away before that;
// once space is back, Enqueue works.
func TestDiskFull(t *testing.T) {
	ctx := context.Background()
	clock := newClock()
	fsys := queuetest.New()
	options := fileOptions
	q := openQueue(t, fsys, options(clock))
	first := enqueue(t, q, envelope(), body(0, 3000))
	used := int64(len(mustRead(t, fsys, string(first)+".msg")))
	b := body(1, 20000)
	env := envelope()
	env.Size = 0 // no SIZE= declared: the free-space check cannot tell
	var second queue.ID
	for room := int64(0); second == ""; room += 997 {
		fsys.SetCapacity(used + room)
		id, err := q.Enqueue(ctx, env, bytes.NewReader(b))
		if err == nil {
			if room < int64(len(b)) {
				t.Fatalf("%d bytes free: %d-byte body queued", room, len(b))
			}
			second = id
			break
		}
		if !errors.Is(err, queue.ErrNoSpace) {
			t.Fatalf("%d bytes free: Enqueue error %v, want ErrNoSpace", room, err)
		}
		if errors.Is(err, syscall.ENOSPC) != (room > 0) {
			// With no room at all, the free-space check refuses first.
			t.Errorf("%d bytes free: %v", room, err)
		}
		if names := fsys.Names(); len(names) != 1 {
			t.Fatalf("%d bytes free: left %q", room, names)
		}
	}
	fsys.Crash()
	closeQueue(t, q)
	q = openQueue(t, fsys, options(clock))
	want := []queue.ID{first, second}
	slices.Sort(want)
	if got := ids(listAll(t, q)); !slices.Equal(got, want) {
		t.Fatalf("after the failures and a crash: %v", got)
	}
	checkMessage(t, q, second, env, b)
	if err := q.Delete(ctx, second); err != nil {
		t.Fatal(err)
	}

	// The free-space check, against the configured margin.
	opts := options(clock)
	opts.MinFreeBytes = 10000
	closeQueue(t, q)
	q = openQueue(t, fsys, opts)
	fsys.SetCapacity(used + 9999)
	wantErr(t, q.CheckSpace(0), queue.ErrNoSpace)
	opsBefore := fsys.Ops()
	_, err := q.Enqueue(ctx, envelope(), bytes.NewReader(b))
	wantErr(t, err, queue.ErrNoSpace)
	if fsys.Ops() != opsBefore+1 {
		t.Errorf("Enqueue refused for space did %d operations, want only statfs", fsys.Ops()-opsBefore)
	}
	fsys.SetCapacity(used + 10000 + 1234)
	if err := q.CheckSpace(0); err != nil {
		t.Errorf("CheckSpace with room: %v", err)
	}
	wantErr(t, q.CheckSpace(1235), queue.ErrNoSpace) // a declared SIZE counts

	fsys.SetCapacity(0)
	third := enqueue(t, q, envelope(), b)
	checkMessage(t, q, third, envelope(), b)
}

func mustRead(t *testing.T, fsys *queuetest.FS, name string) []byte {
	t.Helper()
	b, err := fsys.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStorageErrors: any operation of an Enqueue that fails makes it fail
// and leave nothing behind.
func TestStorageErrors(t *testing.T) {
	ctx := context.Background()
	eio := syscall.EIO
	for n := 1; ; n++ {
		fsys := queuetest.New()
		q := openQueue(t, fsys, fileOptions(newClock()))
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
		if failed.N == 0 {
			if err != nil {
				t.Fatal(err)
			}
			return
		}
		if !errors.Is(err, eio) {
			t.Errorf("%s failed: Enqueue error %v", failed.Kind, err)
		}
		fsys.Fail(nil)
		if names := fsys.Names(); len(names) != 0 {
			t.Errorf("%s failed: left %q", failed.Kind, names)
		}
	}
}
