package queue_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// The delivery side: wait for a message to be due, lease it, attempt its
// due recipients, report per recipient with the lifetime that the routing
// table current at the attempt gives.
func ExampleLease() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "spool")
	fsys, _ := queue.OpenDir(dir)
	q, _ := queue.Open(ctx, fsys, queue.Options{MinFreeBytes: 1})
	defer func() {
		_, _, _ = q.Close(), fsys.Close(), os.RemoveAll(dir)
	}()
	env := queue.Envelope{From: "app@example.com", To: []queue.Rcpt{{Addr: "a@example.net"}, {Addr: "b@example.org"}}}
	id, _ := q.Enqueue(ctx, env, strings.NewReader("Subject: hi\r\n\r\nhello\r\n"))

	// One round of the loop (a real one repeats until ctx is done).
	for _, id := range q.Due(time.Now(), 100) {
		l, err := q.Lease(ctx, id)
		if err != nil {
			continue // delivered, deleted or held meanwhile
		}
		m := l.Message()
		var results []queue.Result
		for _, i := range m.Due(time.Now()) {
			// Attempt m.Envelope.To[i] with l.Body(ctx) here.
			r := queue.Result{Recipient: i, State: queue.Delivered, Reply: queue.Reply{Code: 250, Enhanced: "2.0.0", Text: "ok"}}
			if strings.HasSuffix(m.Envelope.To[i].Addr, ".org") {
				r = queue.Result{Recipient: i, State: queue.Pending, Reply: queue.Reply{Code: 451, Enhanced: "4.4.1", Text: "no answer"}}
			}
			results = append(results, r)
		}
		// Bounces for Failed recipients are enqueued before the Update.
		m, err = l.Update(ctx, queue.Attempt{Lifetime: 48 * time.Hour, Results: results})
		if err != nil {
			continue // the recipients stay pending and are tried again
		}
		l.Close()
		for i, s := range m.Recipients {
			fmt.Println(m.Envelope.To[i].Addr, s.State, s.Attempts, s.Reply)
		}
	}
	// Then wait for the next message: on q.Changed(), or until q.NextDue().
	next, _ := q.NextDue()
	fmt.Println(time.Until(next).Round(time.Minute) == time.Minute, id != "")
	// Output:
	// a@example.net delivered 1 250 2.0.0 ok
	// b@example.org pending 1 451 4.4.1 no answer
	// true true
}
