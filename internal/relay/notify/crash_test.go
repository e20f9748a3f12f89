package notify

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/testenv"
)

// crashJournal is a journalFS of queuetest filesystems, one per queue: a
// file's content survives a crash once synced, a name once its directory
// is. A queue's directory itself is durable at once, as dirJournal makes it.
type crashJournal struct {
	mu     sync.Mutex
	queues map[string]*queuetest.FS
}

func newCrashJournal() *crashJournal { return &crashJournal{queues: map[string]*queuetest.FS{}} }

func (c *crashJournal) Queues() ([]string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var names []string
	for n := range c.queues {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func (c *crashJournal) Queue(name string) (queue.FS, error) { return c.fs(name), nil }

func (c *crashJournal) fs(name string) *queuetest.FS {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.queues[name]
	if f == nil {
		f = queuetest.New()
		c.queues[name] = f
	}
	return f
}

func (r *receiver) setStatus(code int) {
	r.mu.Lock()
	r.status = code
	r.mu.Unlock()
}

// accepted lists the jobs of the requests answered 2xx.
func (r *receiver) accepted() map[string]bool {
	got := map[string]bool{}
	for _, rq := range r.requests() {
		if rq.status/100 == 2 {
			got[rq.parsed.Meta.JobID] = true
		}
	}
	return got
}

// TestJournalCrashes runs the notifier over a filesystem that loses, at a
// power failure, every write and every name change not synced (writes torn
// at random), with the power failing at a random operation while
// notifications are sent and more are written, several times in a row, then
// restarts it cleanly twice with a new notification each time. Every
// notification journaled before a crash was armed, and each new one, is
// delivered: at least once, whatever the crash left (a cursor older than
// what was sent, deleted segments back, torn records).
func TestJournalCrashes(t *testing.T) {
	for seed := range uint64(24) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) { crashRun(t, seed) })
	}
}

func crashRun(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	jfs := newCrashJournal()
	fsys := jfs.fs("example.test")
	fsys.TearWrites(rand.New(rand.NewPCG(seed, 2))) // used under the FS's lock
	rcv := newReceiver(t)
	var src tables
	src.set(t, hook{"example.test", rcv.url(), key1})
	opts := fastOptions(t.TempDir(), &src)
	opts.fs = jfs
	opts.SegmentBytes = 2 << 10 // a few records a segment: rolls, retirements, deletions
	must := map[string]bool{}
	jobs := 0
	observe := func(e *env) string {
		jobs++
		id := fmt.Sprintf("J%d", jobs)
		e.n.Observe(attempt(id, "example.test", delivery.StatusSent))
		return id
	}

	for range 6 {
		// The receiver down: nothing is acknowledged, so the pending
		// count tells when the new notifications are journaled.
		rcv.setStatus(503)
		e := start(t, opts)
		base, k := e.n.pendingDisk.Load(), 1+rng.IntN(6)
		for range k {
			must[observe(e)] = true
		}
		testenv.EventuallyTrue(t, "still waiting for journaled", func() bool { return e.n.pendingDisk.Load() == base+int64(k) })

		switch rng.IntN(3) {
		case 0: // a power failure at a random operation from now on
			fsys.CrashAt(1 + rng.IntN(40))
			up := rng.IntN(3) > 0
			if up {
				rcv.setStatus(0)
			}
			for range rng.IntN(4) {
				observe(e) // journaled or not: the crash decides
			}
			testenv.EventuallyTrue(t, "still waiting for the crash, or all sent", func() bool {
				return fsys.Crashed() || (up && e.n.pendingDisk.Load() == 0 && len(e.n.in) == 0)
			})
			e.stop()
			if fsys.Crashed() {
				fsys.Reboot()
			} else {
				fsys.Crash()
			}
		case 1: // clean stops (SIGTERM) once everything is sent: drained
			rcv.setStatus(0)
			testenv.EventuallyTrue(t, "still waiting for all sent", func() bool { return e.n.pendingDisk.Load() == 0 })
			e.stop()
			for range rng.IntN(3) {
				e = start(t, opts)
				testenv.EventuallyTrue(t, "still waiting for drained segments deleted", func() bool { return e.n.diskBytes.Load() == 0 })
				e.stop()
			}
		default: // a clean stop with notifications pending
			e.stop()
		}
	}

	rcv.setStatus(0)
	for range 2 {
		e := start(t, opts)
		must[observe(e)] = true
		testenv.EventuallyTrue(t, "still waiting for every journaled notification delivered", func() bool {
			got := rcv.accepted()
			for id := range must {
				if !got[id] {
					return false
				}
			}
			return true
		})
		e.stop()
	}
}
