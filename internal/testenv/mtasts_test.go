package testenv

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"testing"

	"github.com/miekg/dns"
)

func TestPolicyServer(t *testing.T) {
	ca := NewCA(t)
	zone := StartDNSServer(t, DNSOptions{})
	s := StartPolicyServer(t, ca, "example.test")
	s.SetPolicy("example.test", "version: STSv1\n")
	s.Publish(t, zone, "example.test", "id1")
	s.Publish(t, zone, "example.test", "id2") // replaces, does not add

	txt := mustQuery(t, zone, "udp", "_mta-sts.example.test", dns.TypeTXT)
	if got := answers(txt); len(got) != 1 || got[0] != `_mta-sts.example.test. 300 IN TXT "v=STSv1; id=id2;"` {
		t.Errorf("TXT %q", got)
	}
	if got := answers(mustQuery(t, zone, "udp", "mta-sts.example.test", dns.TypeA)); len(got) != 1 {
		t.Errorf("A %q", got)
	}

	// The client dials 127.0.0.1 whatever the name, as a relay whose
	// resolver is zone would, and verifies the name.
	port := strconv.Itoa(s.Port())
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: ca.ClientConfig(""),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
		},
	}}
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type") + " " + string(body)
	}
	if code, got := get("https://mta-sts.example.test:" + port + PolicyPath); code != 200 || got != "text/plain; charset=utf-8 version: STSv1\n" {
		t.Errorf("policy: %d %q", code, got)
	}
	if code, _ := get("https://mta-sts.example.test:" + port + "/other"); code != 404 {
		t.Errorf("another path: %d, want 404", code)
	}
	if n := s.Requests("example.test"); n != 2 {
		t.Errorf("%d requests, want 2", n)
	}
	resp, err := client.Get("https://mta-sts.other.test:" + port + PolicyPath)
	if err == nil {
		_ = resp.Body.Close()
		t.Error("a name off the certificate was accepted")
	}
}
