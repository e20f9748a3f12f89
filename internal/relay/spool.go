package relay

import (
	"context"
	"io"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/smtpd"
)

// QueueSpool is the SMTP server's Spool in a running relay: the durable
// internal/relay/queue.
type QueueSpool struct {
	Queue *queue.Queue
}

// CheckSpace asks the queue (free space and message count).
func (s QueueSpool) CheckSpace(size int64) error { return s.Queue.CheckSpace(size) }

// Enqueue stores the message with its envelope exactly as the client gave
// it; the queue returns only once both are fsynced.
func (s QueueSpool) Enqueue(ctx context.Context, env *smtpd.Envelope, body io.Reader) (string, error) {
	o := env.MailOptions
	qe := queue.Envelope{
		From: env.From, Size: o.Size, Body: string(o.Body), SMTPUTF8: o.UTF8, RequireTLS: o.RequireTLS,
		Ret: string(o.Return), EnvID: o.EnvelopeID,
		ClientAddr: env.Client.String(), HELO: env.Helo, Auth: env.Identity,
		MessageID: env.MessageID, HeaderFrom: env.HeaderFrom, Tag: env.Tag, TLSOptional: env.TLSOptional,
	}
	for i, addr := range env.To {
		r := queue.Rcpt{Addr: addr}
		if i < len(env.RcptOptions) {
			ro := env.RcptOptions[i]
			for _, n := range ro.Notify {
				r.Notify = append(r.Notify, string(n))
			}
			if ro.OriginalRecipient != "" {
				r.ORcpt = string(ro.OriginalRecipientType) + ";" + ro.OriginalRecipient
			}
		}
		qe.To = append(qe.To, r)
	}
	id, err := s.Queue.Enqueue(ctx, qe, body)
	return string(id), err
}
