package relay

// The bouncer connects delivery to the queue for failures: when the
// delivery worker reports recipients that failed for good, it builds the
// RFC 3464 notification (internal/relay/dsn) and enqueues it, from the null sender,
// into the same durable queue, which delivers it like any other message.

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/delivery"
	"github.com/postgate/postgate/internal/relay/dsn"
	"github.com/postgate/postgate/internal/relay/queue"
)

// Queuer is the queue as the bouncer needs it.
type Queuer interface {
	Body(ctx context.Context, id queue.ID) (io.ReadCloser, error)
	Enqueue(ctx context.Context, env queue.Envelope, body io.Reader) (queue.ID, error)
}

// Bouncer implements delivery.Bouncer.
type Bouncer struct {
	Queue Queuer
	// Hostname is the Reporting-MTA and MAILER-DAEMON's domain.
	Hostname string
	// Now dates the notifications; default time.Now.
	Now func() time.Time
	// Logger notes each notification queued; none when nil.
	Logger *slog.Logger
}

// Bounce enqueues one DSN for b. Nothing is enqueued for a null-sender
// message or when no recipient asked for one (NOTIFY). The DSN itself has
// the null sender, so it is never bounced in turn (RFC 3464 section 2,
// RFC 5321 section 4.5.5), and it asks for no notification (NOTIFY=NEVER).
func (bo *Bouncer) Bounce(ctx context.Context, b delivery.Bounce) error {
	now := time.Now
	if bo.Now != nil {
		now = bo.Now
	}
	var original io.Reader = strings.NewReader("")
	body, err := bo.Queue.Body(ctx, b.Message.ID)
	switch {
	case err == nil:
		defer func() { _ = body.Close() }()
		original = body
	case errors.Is(err, queue.ErrNotFound):
		// Expired and removed a moment ago: report without the content.
	default:
		return err
	}
	n, err := dsn.Build(dsn.Params{Hostname: bo.Hostname, Now: now(), RemoteMTA: b.RemoteMTA, LastAttempt: b.Time}, b.Message, b.Recipients, original)
	if err != nil || n == nil {
		return err
	}
	env := queue.Envelope{From: "", SMTPUTF8: n.SMTPUTF8}
	for _, to := range n.To {
		env.To = append(env.To, queue.Rcpt{Addr: to, Notify: []string{"NEVER"}})
	}
	id, err := bo.Queue.Enqueue(ctx, env, bytes.NewReader(n.Data))
	if err == nil && bo.Logger != nil {
		// The line that ties the sender's notification to the message:
		// its own delivery is logged under id, from <>.
		action := "failed"
		if b.Message.Recipients[n.Recipients[0]].State == queue.Delivered {
			action = "relayed"
		}
		bo.Logger.Info("Delivery status notification queued", "id", string(id), "original", string(b.Message.ID),
			"action", action, "recipients", len(n.Recipients))
	}
	return err
}
