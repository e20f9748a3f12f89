package delivery

import (
	"testing"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/testenv"
)

// TestAttemptCarriesTheEnvelope: an attempt reports what the envelope
// kept from accept time for notifications: Message-ID, From and the
// client's tag.
func TestAttemptCarriesTheEnvelope(t *testing.T) {
	e := newEnv(t)
	e.mxSink("127.0.0.3", testenv.SMTPSinkOptions{})
	e.dnsAdd("rcpt.test. MX 10 mx.rcpt.test.", "mx.rcpt.test. A 127.0.0.3")
	e.setTable(senderDomain("sender.test"))
	e.start()
	e.enqueueEnv(queue.Envelope{From: "app@sender.test", To: []queue.Rcpt{{Addr: "user@rcpt.test"}},
		MessageID: "<m1@sender.test>", HeaderFrom: "news@sender.test", Tag: "campaign-7"}, testBody)
	if a := e.attempt(1); a.Status != StatusSent || a.Tag != "campaign-7" || a.MessageID != "<m1@sender.test>" || a.HeaderFrom != "news@sender.test" {
		t.Errorf("attempt: %+v", a)
	}
}
