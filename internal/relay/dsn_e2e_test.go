package relay_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/testenv"
)

// TestRelayedDSNEndToEnd (RFC 3461): a client submits with RET, ENVID,
// NOTIFY=SUCCESS and ORCPT; the recipient's MX does not offer DSN, so the
// relay delivers without the parameters and sends the sender a
// "relayed" report, which reaches the sender domain's own MX from the null
// sender, as RFC 3464 lays it out, with the ENVID and ORCPT given.
func TestRelayedDSNEndToEnd(t *testing.T) {
	dns := testenv.StartDNSServer(t, testenv.DNSOptions{})
	destMX := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: "127.0.21.1:0", NoDSN: true})
	senderMX := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Addr: fmt.Sprintf("127.0.21.2:%d", destMX.Port())})
	if err := dns.Add("dest.test. 60 IN MX 10 mx.dest.test.", "mx.dest.test. 60 IN A 127.0.21.1",
		"example.com. 60 IN MX 10 mx.example.com.", "mx.example.com. 60 IN A 127.0.21.2"); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	manifests := "apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata: {name: example}\nspec: {domain: example.com}\n" +
		"---\napiVersion: postgate.io/v1alpha1\nkind: TrustedNetwork\nmetadata: {name: lo}\nspec: {cidrs: [127.0.0.0/8]}\n"
	if err := os.WriteFile(filepath.Join(dir, "relay.yaml"), []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}
	p := runRelayInProcess(t, standaloneConfig(t, dir, dns.Addr(), destMX.Port()))

	c, err := smtp.Dial(p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if err := c.Hello("app.test"); err != nil {
		t.Fatal(err)
	}
	if ok, _ := c.Extension("DSN"); !ok {
		t.Fatal("the relay does not offer DSN")
	}
	if err := c.Mail("alice@example.com", &smtp.MailOptions{Return: smtp.DSNReturnFull, EnvelopeID: "order-4711"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("bob@dest.test", &smtp.RcptOptions{Notify: []smtp.DSNNotify{smtp.DSNNotifySuccess, smtp.DSNNotifyFailure},
		OriginalRecipientType: smtp.DSNAddressTypeRFC822, OriginalRecipient: "robert@dest.test"}); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("From: alice@example.com\r\nTo: bob@dest.test\r\nSubject: order\r\n\r\nYour order.\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.Quit()

	wait, stop := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer stop()
	delivered, err := destMX.WaitMessages(wait, 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, p.logs())
	}
	if raw := delivered[0].RawRcpts[0]; raw != "RCPT TO:<bob@dest.test>" {
		t.Errorf("to a next hop without DSN: %q, want no parameters", raw)
	}
	reports, err := senderMX.WaitMessages(wait, 1)
	if err != nil {
		t.Fatalf("no report at the sender's MX: %v\n%s", err, p.logs())
	}
	r := reports[0]
	if r.From != "" || len(r.Rcpts) != 1 || r.Rcpts[0] != "alice@example.com" {
		t.Errorf("report envelope %q -> %q, want <> -> alice@example.com", r.From, r.Rcpts)
	}
	rep, err := testenv.ParseDSN(bytes.NewReader(r.Data))
	if err != nil {
		t.Fatalf("%v:\n%s", err, r.Data)
	}
	if got := rep.PerMessage.Get("Original-Envelope-Id"); got != "order-4711" {
		t.Errorf("Original-Envelope-Id %q", got)
	}
	if len(rep.PerRecipient) != 1 {
		t.Fatalf("%d recipients reported", len(rep.PerRecipient))
	}
	f := rep.PerRecipient[0]
	if f.Get("Action") != "relayed" || !strings.HasPrefix(f.Get("Status"), "2.") || f.Get("Final-Recipient") != "rfc822; bob@dest.test" ||
		f.Get("Original-Recipient") != "rfc822; robert@dest.test" || f.Get("Remote-MTA") != "dns; mx.dest.test" {
		t.Errorf("recipient fields %v", f)
	}
	if !strings.Contains(p.logs(), `msg="Delivery status notification queued"`) || !strings.Contains(p.logs(), "action=relayed recipients=1") {
		t.Errorf("no log line for the report:\n%s", p.logs())
	}
	if rep.OriginalType != "text/rfc822-headers" || bytes.Contains(rep.Original, []byte("Your order.")) || !bytes.Contains(rep.Original, []byte("Subject: order")) {
		t.Errorf("returned %s %q: want the header only", rep.OriginalType, rep.Original)
	}
}
