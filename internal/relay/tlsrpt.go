package relay

// The report submitter connects TLS reporting to the queue: a mailto:
// report (internal/relay/tlsrpt) is signed with DKIM of its sender's
// domain, as RFC 8460 section 5.3 asks, and enqueued into the same durable
// queue, which delivers it like any other message.

import (
	"bytes"
	"context"
	"fmt"

	"github.com/postgate/postgate/internal/relay/message"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/smtpd"
)

// ReportSubmitter implements tlsrpt.Options.Submit.
type ReportSubmitter struct {
	Queue  Queuer
	Tables smtpd.TableSource
	// Hostname is the relay's name, in the Received field and Message-ID.
	Hostname string
	// StageDir holds a signed message while it is signed (the spool's
	// staging directory).
	StageDir string
}

// Submit signs the report with the key of from's SenderDomain and enqueues
// it. A sender whose domain does not sign (or whose key is unavailable)
// is an error: RFC 8460 section 5.3 has receivers drop unsigned reports.
// The report asks for no delivery notification (NOTIFY=NEVER): its sender
// is a reporting address nobody reads, and the queue retries on its own.
func (s *ReportSubmitter) Submit(ctx context.Context, from string, to []string, msg []byte) error {
	t := s.Tables.Table()
	if t == nil {
		return fmt.Errorf("no routing table loaded yet")
	}
	d := t.Lookup(from).Domain
	switch {
	case d == nil:
		return fmt.Errorf("the TLS report sender %s is not in a SenderDomain, so its report cannot be signed (RFC 8460 section 5.3)", from)
	case d.SigningUnavailable != "":
		return fmt.Errorf("the DKIM key of %s is unavailable: %s", d.Name, d.SigningUnavailable)
	case d.DKIM == nil:
		return fmt.Errorf("the SenderDomain %s of the TLS report sender %s does not sign, and reports must be signed (RFC 8460 section 5.3)", d.Name, from)
	}
	p, err := message.Prepare(ctx, bytes.NewReader(msg), message.Params{
		Hostname: s.Hostname, Helo: s.Hostname, Recipients: to,
		SenderDomain: d.Name, DKIM: d.DKIM, StageDir: s.StageDir,
	})
	if err != nil {
		return err
	}
	defer func() { _ = p.Close() }()
	env := queue.Envelope{From: from, MessageID: p.MessageID, HeaderFrom: p.HeaderFrom, TLSOptional: true}
	for _, addr := range to {
		env.To = append(env.To, queue.Rcpt{Addr: addr, Notify: []string{"NEVER"}})
	}
	_, err = s.Queue.Enqueue(ctx, env, p)
	return err
}
