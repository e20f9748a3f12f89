package smtpd

import (
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postgate/postgate/internal/testenv"
)

// TestMetrics runs sessions through a server and reads its counters: one
// message queued, one relay denial, one bad address, one bare-LF message
// refused, one connection over the per-client limit.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	addr, _, _ := testServer(t, Config{Metrics: m, MaxConnectionsPerClient: 1})

	c := dialFrom(t, "127.0.0.10", addr)
	c.hello()
	c.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	c.expect("RCPT TO:<bob@dest.test>\r\n", 250, "")
	c.expect("RCPT TO:<carol%elsewhere.test@dest.test>\r\n", 553, "5.1.3")
	c.expect("DATA\r\n", 354, "")
	c.expect("Subject: hi\r\n\r\nhello\r\n.\r\n", 250, "queued as")
	c.startData()
	c.expect("Subject: x\r\n\r\nbare\nLF\r\n.\r\n", 550, "5.5.2")

	// The same client address again: over MaxConnectionsPerClient.
	over := dialFrom(t, "127.0.0.10", addr)
	if code, line := over.reply(); code != 421 {
		t.Fatalf("second connection: %q, want 421", line)
	}

	// A client outside every TrustedNetwork.
	d := dialFrom(t, "127.0.0.200", addr)
	d.hello()
	d.expect("MAIL FROM:<alice@example.com>\r\n", 250, "")
	d.expect("RCPT TO:<bob@dest.test>\r\n", 554, "5.7.1")

	got := testenv.Gather(t, reg)
	for _, tc := range []struct {
		series string
		want   float64
	}{
		{MetricSessions + "{}", 2},
		{MetricSessionsActive + "{}", 2},
		{MetricMessagesAccepted + "{}", 1},
		{MetricRejections + `{reason="relay_denied",stage="rcpt"}`, 1},
		{MetricRejections + `{reason="bad_address",stage="rcpt"}`, 1},
		{MetricRejections + `{reason="bad_bytes",stage="data"}`, 1},
		{MetricConnectionsRefused + `{reason="connection_limit"}`, 1},
		{MetricConnectionsRefused + `{reason="proxy_header"}`, 0},
	} {
		if v, ok := got[tc.series]; !ok || v != tc.want {
			t.Errorf("%s = %v (present %v), want %v", tc.series, v, ok, tc.want)
		}
	}
	if b := got[MetricMessagesAcceptedBytes+"{}"]; b < float64(len("Subject: hi\r\n\r\nhello\r\n")) {
		t.Errorf("%s = %v, want at least the message's length", MetricMessagesAcceptedBytes, b)
	}

	// Sessions that end leave the active gauge.
	_ = c.conn.Close()
	_ = d.conn.Close()
	testenv.Eventually(t, func() string {
		if v := testenv.Gather(t, reg)[MetricSessionsActive+"{}"]; v != 0 {
			return fmt.Sprintf("%s = %v after the clients left, want 0", MetricSessionsActive, v)
		}
		return ""
	})
}
