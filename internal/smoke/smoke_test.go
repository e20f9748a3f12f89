package smoke

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/postgate/postgate/internal/testenv"
)

func TestSMTP(t *testing.T) {
	sink := testenv.StartSMTPSink(t, testenv.SMTPSinkOptions{Hostname: "relay.test"})
	greeting, ehlo, err := SMTP(context.Background(), sink.Addr(), "smoke.test")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(greeting, "relay.test ") || !strings.Contains(ehlo, "smoke.test") || !strings.Contains(ehlo, "\nPIPELINING") {
		t.Errorf("greeting %q, EHLO reply %q: want the sink's name, then the EHLO reply's lines", greeting, ehlo)
	}

	for _, tc := range []struct {
		stage testenv.Stage
		want  string
	}{
		// A relay that refuses the client (RFC 5321 section 3.1).
		{testenv.StageConnect, "greeting"},
		{testenv.StageHello, "EHLO reply"},
	} {
		sink.SetFault(tc.stage, testenv.Fault{Code: 554, Enhanced: smtp.EnhancedCode{5, 7, 1}, Text: "not you"})
		_, _, err := SMTP(context.Background(), sink.Addr(), "smoke.test")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "554") {
			t.Errorf("a 554 at %s: got %v", tc.want, err)
		}
		sink.ClearFaults()
	}

	sink.Close()
	if _, _, err := SMTP(context.Background(), sink.Addr(), "smoke.test"); err == nil {
		t.Error("a closed port passed")
	}
}

func TestTable(t *testing.T) {
	var page atomic.Pointer[string]
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(*page.Load()))
	}))
	t.Cleanup(srv.Close)
	for _, tc := range []struct {
		name, page string
		want       int64
		err        string
	}{
		{"loaded", "# HELP postgate_relay_table_loaded x\n# TYPE postgate_relay_table_loaded gauge\npostgate_relay_table_loaded 1\npostgate_relay_table_version 42\npostgate_relay_table_objects 3\n", 42, ""},
		{"before the first table", "postgate_relay_table_loaded 0\npostgate_relay_table_version 0\n", 0, "no routing table loaded"},
		{"not a relay", "go_goroutines 12\n", 0, "not a postgate relay"},
	} {
		page.Store(&tc.page)
		got, err := Table(context.Background(), srv.Client(), srv.URL+"/metrics")
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("%s: got %d, %v; want %d", tc.name, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: got %d, %v; want an error with %q", tc.name, got, err, tc.err)
		}
	}
}
