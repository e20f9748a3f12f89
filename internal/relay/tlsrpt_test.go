package relay

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/queue/queuetest"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

// TestTLSReportQueuedSigned: a day's mailto: report goes from the reporter
// through ReportSubmitter into the queue, signed with DKIM of the
// reporting domain (RFC 8460 section 5.3), with NOTIFY=NEVER, and carries
// the gzip JSON a receiver reads.
func TestTLSReportQueuedSigned(t *testing.T) {
	ctx := t.Context()
	q, err := queue.Open(ctx, queuetest.New(), queue.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = q.Close() }()
	tables, record := reportingTable(t)
	sub := &ReportSubmitter{Queue: q, Tables: tables, Hostname: "relay.test", StageDir: t.TempDir()}

	day := time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)
	r, err := tlsrpt.Open(tlsrpt.Options{
		Clock:            testenv.NewClock(day.AddDate(0, 0, 1).Add(time.Minute)),
		OrganizationName: "Example", Submitter: "relay.test", From: "tlsrpt@reports.test", MaxDelay: -1,
		Submit: sub.Submit,
		LookupTXT: func(_ context.Context, name string) ([]string, error) {
			return []string{"v=TLSRPTv1; rua=mailto:rua@dest.test"}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	r.Record(tlsrpt.Session{Policy: tlsrpt.Policy{Type: tlsrpt.PolicyNotFound, Domain: "dest.test"}, Time: day.Add(time.Hour)})
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	var msgs []queue.Message
	testenv.Eventually(t, func() string {
		if msgs, err = q.List(ctx, "", 10); err != nil || len(msgs) == 0 {
			return "no report in the queue"
		}
		return ""
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	env := msgs[0].Envelope
	if env.From != "tlsrpt@reports.test" || len(env.To) != 1 || env.To[0].Addr != "rua@dest.test" || strings.Join(env.To[0].Notify, ",") != "NEVER" {
		t.Errorf("envelope %+v", env)
	}
	body, err := q.Body(ctx, msgs[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(body)
	_ = body.Close()
	verifications, err := dkim.VerifyWithOptions(bytes.NewReader(data), &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return []string{record.Value}, nil },
	})
	if err != nil || len(verifications) != 1 || verifications[0].Err != nil || verifications[0].Domain != "reports.test" {
		t.Fatalf("DKIM: %v %+v\n%s", err, verifications, data)
	}
	if sig := strings.ReplaceAll(strings.ReplaceAll(string(data[:bytes.Index(data, []byte("\r\n\r\n"))]), "\r\n", ""), "\t", ""); !strings.Contains(sig, "TLS-Report-Domain:TLS-Report-Submitter") {
		t.Errorf("the signature does not cover TLS-Report-Domain and TLS-Report-Submitter:\n%s", data)
	}
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("TLS-Report-Domain") != "dest.test" {
		t.Errorf("TLS-Report-Domain %q", m.Header.Get("TLS-Report-Domain"))
	}
	_, params, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	mr := multipart.NewReader(m.Body, params["boundary"])
	var report map[string]any
	for {
		p, err := mr.NextPart()
		if err != nil {
			break
		}
		if p.Header.Get("Content-Type") == "" || !strings.HasPrefix(p.Header.Get("Content-Type"), "application/tlsrpt+gzip") {
			continue
		}
		zr, err := gzip.NewReader(base64.NewDecoder(base64.StdEncoding, p))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.NewDecoder(zr).Decode(&report); err != nil {
			t.Fatal(err)
		}
	}
	if report["organization-name"] != "Example" {
		t.Errorf("report %v", report)
	}
}

// TestReportSubmitterNeedsSigning: a sender whose domain does not sign, or
// that is in no SenderDomain, gets an error naming why.
func TestReportSubmitterNeedsSigning(t *testing.T) {
	compiled := routing.Compile(routing.Input{SenderDomains: []v1alpha1.SenderDomain{{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "plain", Generation: 1},
		Spec:       v1alpha1.SenderDomainSpec{Domain: "plain.test"}}}}, nil)
	sub := &ReportSubmitter{Queue: nil, Tables: fixedTable{compiled.Table}, Hostname: "relay.test", StageDir: t.TempDir()}
	for from, want := range map[string]string{"r@plain.test": "does not sign", "r@nowhere.test": "not in a SenderDomain"} {
		if err := sub.Submit(t.Context(), from, []string{"rua@dest.test"}, []byte("Subject: x\r\n\r\nx\r\n")); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Submit from %s: %v, want %q", from, err, want)
		}
	}
}

// reportingTable is a table where reports.test signs with an Ed25519 key,
// and the DKIM record of that key.
func reportingTable(t *testing.T) (fixedTable, v1alpha1.DKIMRecord) {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(key)
	meta := metav1.ObjectMeta{Namespace: "app", Name: "reports", Generation: 1}
	result := routing.Compile(routing.Input{
		SenderDomains: []v1alpha1.SenderDomain{{ObjectMeta: meta, Spec: v1alpha1.SenderDomainSpec{Domain: "reports.test",
			Signing: &v1alpha1.DKIMSigning{Selector: "s1", Algorithm: v1alpha1.DKIMAlgorithmEd25519,
				KeySecretRef: &v1alpha1.SecretKeyReference{Name: "dkim"}}}}},
		Secrets: []corev1.Secret{{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "dkim"},
			Data: map[string][]byte{"private.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}}},
	}, nil)
	record := result.Verdict(routing.ObjectKey{Kind: routing.KindSenderDomain, Namespace: "app", Name: "reports"}).DKIM
	if record == nil || result.Table.Domain("reports.test") == nil || result.Table.Domain("reports.test").DKIM == nil {
		t.Fatal("the reporting domain does not sign")
	}
	return fixedTable{result.Table}, *record
}
