package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"strings"
	"testing"
	"time"
)

// day0 is the UTC day the tests count in.
var day0 = time.Date(2026, 12, 5, 0, 0, 0, 0, time.UTC)

// testOptions are valid Options that send nothing anywhere.
func testOptions() Options {
	return Options{
		OrganizationName: "Example Relay Operators",
		ContactInfo:      "tlsrpt-contact@sender.test",
		Submitter:        "relay.sender.test",
		From:             "tlsrpt@sender.test",
		LookupTXT: func(context.Context, string) ([]string, error) {
			return nil, &net.DNSError{Err: "no such host", IsNotFound: true}
		},
	}
}

func open(t *testing.T, opts Options) *Reporter {
	t.Helper()
	r, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// checkSchema fails the test unless report is an RFC 8460 section 4.4
// report: every field with its name and JSON type, nothing else; it
// returns the decoded report.
func checkSchema(t *testing.T, report []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(report, &m); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, report)
	}
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	type spec struct {
		kind     string // string, number, object, array, strings
		required bool
	}
	check := func(where string, obj any, fields map[string]spec) map[string]any {
		o, ok := obj.(map[string]any)
		if !ok {
			bad("%s is %T, not an object", where, obj)
			return nil
		}
		for name, v := range o {
			sp, known := fields[name]
			if !known {
				bad("%s has unknown field %q", where, name)
				continue
			}
			okType := false
			switch sp.kind {
			case "string":
				_, okType = v.(string)
			case "number":
				n, isNum := v.(float64)
				okType = isNum && n >= 0 && n == float64(int64(n))
			case "object":
				_, okType = v.(map[string]any)
			case "array":
				_, okType = v.([]any)
			case "strings":
				a, isArr := v.([]any)
				okType = isArr
				for _, e := range a {
					if _, s := e.(string); !s {
						okType = false
					}
				}
			}
			if !okType {
				bad("%s.%s is %T, not %s", where, name, v, sp.kind)
			}
		}
		for name, sp := range fields {
			if _, ok := o[name]; sp.required && !ok {
				bad("%s lacks %q", where, name)
			}
		}
		return o
	}
	top := check("report", m, map[string]spec{
		"organization-name": {"string", true}, "date-range": {"object", true}, "contact-info": {"string", true},
		"report-id": {"string", true}, "policies": {"array", true},
	})
	if dr := check("date-range", top["date-range"], map[string]spec{"start-datetime": {"string", true}, "end-datetime": {"string", true}}); dr != nil {
		for _, f := range []string{"start-datetime", "end-datetime"} {
			if s, _ := dr[f].(string); s != "" {
				if _, err := time.Parse(time.RFC3339, s); err != nil {
					bad("%s %q is not RFC 3339", f, s)
				}
			}
		}
	}
	policies, _ := top["policies"].([]any)
	for i, p := range policies {
		where := fmt.Sprintf("policies[%d]", i)
		pr := check(where, p, map[string]spec{"policy": {"object", true}, "summary": {"object", true}, "failure-details": {"array", false}})
		if pr == nil {
			continue
		}
		pol := check(where+".policy", pr["policy"], map[string]spec{
			"policy-type": {"string", true}, "policy-string": {"strings", false}, "policy-domain": {"string", true}, "mx-host": {"strings", false},
		})
		if pt, _ := pol["policy-type"].(string); pt != "tlsa" && pt != "sts" && pt != "no-policy-found" {
			bad("%s.policy.policy-type %q", where, pt)
		}
		check(where+".summary", pr["summary"], map[string]spec{
			"total-successful-session-count": {"number", true}, "total-failure-session-count": {"number", true},
		})
		details, _ := pr["failure-details"].([]any)
		for j, d := range details {
			fd := check(fmt.Sprintf("%s.failure-details[%d]", where, j), d, map[string]spec{
				"result-type": {"string", true}, "sending-mta-ip": {"string", false}, "receiving-mx-hostname": {"string", false},
				"receiving-mx-helo": {"string", false}, "receiving-ip": {"string", false}, "failed-session-count": {"number", true},
				"additional-information": {"string", false}, "failure-reason-code": {"string", false},
			})
			if !resultTypes[fmt.Sprint(fd["result-type"])] {
				bad("%s.failure-details[%d].result-type %q is not a section 4.3 result type", where, j, fd["result-type"])
			}
		}
	}
	if len(errs) > 0 {
		t.Fatalf("report does not follow RFC 8460 section 4.4:\n%s\n%s", strings.Join(errs, "\n"), report)
	}
	return m
}

var resultTypes = map[string]bool{
	ResultSTARTTLSNotSupported: true, ResultCertificateHostMismatch: true, ResultCertificateExpired: true,
	ResultCertificateNotTrusted: true, ResultValidationFailure: true, ResultTLSAInvalid: true, ResultDNSSECInvalid: true,
	ResultDANERequired: true, ResultSTSPolicyFetchError: true, ResultSTSPolicyInvalid: true, ResultSTSWebPKIInvalid: true,
}

// mailReportParts reads a report message as a receiver would (net/mail,
// mime/multipart): it checks the RFC 8460 section 5.3 header fields and
// returns the header, the attachment's file name and the gunzipped JSON.
func mailReportParts(t *testing.T, msg []byte) (mail.Header, string, []byte) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("report message: %v\n%s", err, msg)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "tlsrpt" {
		t.Fatalf("Content-Type %q (%v), want multipart/report; report-type=tlsrpt", m.Header.Get("Content-Type"), err)
	}
	for _, f := range []string{"From", "To", "Date", "Message-ID", "Subject", "TLS-Report-Domain", "TLS-Report-Submitter", "MIME-Version"} {
		if m.Header.Get(f) == "" {
			t.Errorf("the message lacks %s", f)
		}
	}
	if m.Header.Get("TLS-Required") != "No" {
		t.Errorf("TLS-Required %q, want No (RFC 8460 section 5.3, RFC 8689)", m.Header.Get("TLS-Required"))
	}
	if _, err := m.Header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var name string
	var report []byte
	var sawText bool
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("MIME part: %v", err)
		}
		pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		switch pt {
		case "text/plain":
			sawText = true
		case "application/tlsrpt+gzip":
			if enc := p.Header.Get("Content-Transfer-Encoding"); enc != "base64" {
				t.Errorf("attachment encoding %q, want base64", enc)
			}
			_, dp, err := mime.ParseMediaType(p.Header.Get("Content-Disposition"))
			if err != nil {
				t.Fatalf("Content-Disposition: %v", err)
			}
			name = dp["filename"]
			report = gunzip(t, base64.NewDecoder(base64.StdEncoding, p))
		default:
			t.Errorf("unexpected part %q", pt)
		}
	}
	if !sawText || report == nil {
		t.Fatalf("the message lacks its text part (%v) or its report (%v)", sawText, report != nil)
	}
	return m.Header, name, report
}

func gunzip(t *testing.T, r io.Reader) []byte {
	t.Helper()
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	return data
}
