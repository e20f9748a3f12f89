package relay

import (
	"context"
	"io"
	"log/slog"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/testenv"
)

func TestBounceEnqueuesADSN(t *testing.T) {
	ctx := context.Background()
	q, err := queue.Open(ctx, queuetest.New(), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Close() }()
	orig := "From: alice@example.com\r\nTo: bob@dest.test\r\nSubject: hello\r\n\r\nbody\r\n"
	id, err := q.Enqueue(ctx, queue.Envelope{From: "alice@example.com", To: []queue.Rcpt{{Addr: "bob@dest.test"}}}, strings.NewReader(orig))
	if err != nil {
		t.Fatal(err)
	}
	msg, err := q.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	msg.Recipients[0].State = queue.Failed
	msg.Recipients[0].Reply = queue.Reply{Code: 550, Enhanced: "5.1.1", Text: "no such user"}
	var logs testenv.LogBuffer
	bo := &Bouncer{Queue: q, Hostname: "relay.test", Now: func() time.Time { return time.Unix(1700000000, 0) },
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}
	if err := bo.Bounce(ctx, delivery.Bounce{Message: msg, Recipients: []int{0}, RemoteMTA: "mx.dest.test", Time: time.Unix(1700000000, 0)}); err != nil {
		t.Fatal(err)
	}

	all, err := q.List(ctx, "", 10)
	if err != nil {
		t.Fatal(err)
	}
	var bounce *queue.Message
	for i := range all {
		if all[i].ID != id {
			bounce = &all[i]
		}
	}
	if bounce == nil {
		t.Fatal("no DSN queued")
	}
	if want := `msg="Delivery status notification queued" id=` + string(bounce.ID) + " original=" + string(id) + " action=failed recipients=1"; !strings.Contains(logs.String(), want) {
		t.Errorf("log lacks %q:\n%s", want, logs.String())
	}
	if bounce.Envelope.From != "" || len(bounce.Envelope.To) != 1 || bounce.Envelope.To[0].Addr != "alice@example.com" {
		t.Errorf("DSN envelope: %+v, want from <> to alice@example.com", bounce.Envelope)
	}
	r, err := q.Body(ctx, bounce.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	data, _ := io.ReadAll(r)
	rep, err := testenv.ParseDSN(strings.NewReader(string(data)))
	if err != nil {
		t.Fatalf("parsing the queued DSN: %v", err)
	}
	m, _ := mail.ReadMessage(strings.NewReader(string(data)))
	if len(rep.PerRecipient) != 1 || !strings.Contains(string(data), "5.1.1") || m.Header.Get("Auto-Submitted") == "" {
		t.Errorf("DSN content:\n%s", data)
	}

	// A bounce is never bounced.
	n := len(all)
	bounceMsg := *bounce
	bounceMsg.Recipients[0].State = queue.Failed
	if err := bo.Bounce(ctx, delivery.Bounce{Message: bounceMsg, Recipients: []int{0}}); err != nil {
		t.Fatal(err)
	}
	if all, _ := q.List(ctx, "", 10); len(all) != n {
		t.Errorf("a DSN for a null-sender message was queued")
	}
}
