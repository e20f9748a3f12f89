package relay_test

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/relay"
)

func TestAdminBindAddressLoopbackOnly(t *testing.T) {
	base := []string{"--manifests", "x"}
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"--admin-bind-address", "[::1]:8025"}, true},
		{[]string{"--admin-bind-address", "localhost:8025"}, true},
		{[]string{"--admin-bind-address", ""}, true},
		{[]string{"--admin-bind-address", ":8025"}, false},
		{[]string{"--admin-bind-address", "10.0.0.1:8025"}, false},
		{[]string{"--admin-bind-address", ":8025", "--admin-allow-non-loopback"}, true},
	} {
		var cfg relay.Config
		fs := flag.NewFlagSet("relay", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		cfg.BindFlags(fs)
		err := fs.Parse(append(base, tc.args...))
		if err == nil {
			err = cfg.Check()
		}
		if (err == nil) != tc.ok {
			t.Errorf("relay %q: error %v, want ok=%t", tc.args, err, tc.ok)
		}
	}
}

// TestNetworkFlags: the networks of --proxy-protocol-cidrs and
// --webhook-allow-cidrs, text on the command line, are parsed by New, which
// names the flag of one that is not a network.
func TestNetworkFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--proxy-protocol-cidrs", "10.0.0.0/8, 192.0.2.1/24", "--webhook-allow-cidrs", "127.0.0.0/8"}, ""},
		{[]string{"--proxy-protocol-cidrs", "10.0.0.1"}, "--proxy-protocol-cidrs: "},
		{[]string{"--webhook-allow-cidrs", "127.0.0.0/8,::1/200"}, "--webhook-allow-cidrs: "},
	} {
		var cfg relay.Config
		fs := flag.NewFlagSet("relay", flag.ContinueOnError)
		cfg.BindFlags(fs)
		if err := fs.Parse(append([]string{"--manifests", "x"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		_, err := relay.New(cfg)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantErr)) {
			t.Errorf("relay %q: New: %v, want an error starting %q", tc.args, err, tc.wantErr)
		}
	}
}

// TestSpoolSegmentFlags: --spool-segment-bytes and --spool-segment-max-body
// in their bounds pass, and Check names the flag of one that is not; a
// negative max body (a file per message) is valid.
func TestSpoolSegmentFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{nil, ""},
		{[]string{"--spool-segment-bytes", "1048576", "--spool-segment-max-body", "16777216"}, ""},
		{[]string{"--spool-segment-max-body", "-1"}, ""},
		{[]string{"--spool-segment-bytes", "1048575"}, "--spool-segment-bytes 1048575: "},
		{[]string{"--spool-segment-bytes", "-1"}, "--spool-segment-bytes -1: "},
		{[]string{"--spool-segment-max-body", "16777217"}, "--spool-segment-max-body 16777217: "},
	} {
		var cfg relay.Config
		fs := flag.NewFlagSet("relay", flag.ContinueOnError)
		cfg.BindFlags(fs)
		if err := fs.Parse(append([]string{"--manifests", "x"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		err := cfg.Check()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.wantErr)) {
			t.Errorf("relay %q: Check: %v, want an error starting %q", tc.args, err, tc.wantErr)
		}
	}
}

// TestInFlowDelayFlag: --in-flow-delay defaults to Postfix's 1s, takes 0
// (off), and is refused negative or past 10s with a message naming it.
func TestInFlowDelayFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    time.Duration
		wantErr bool
	}{
		{nil, time.Second, false},
		{[]string{"--in-flow-delay", "0"}, 0, false},
		{[]string{"--in-flow-delay", "250ms"}, 250 * time.Millisecond, false},
		{[]string{"--in-flow-delay", "-1s"}, 0, true},
		{[]string{"--in-flow-delay", "11s"}, 0, true},
	} {
		var cfg relay.Config
		fs := flag.NewFlagSet("relay", flag.ContinueOnError)
		cfg.BindFlags(fs)
		if err := fs.Parse(append([]string{"--manifests", "x"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		err := cfg.Check()
		switch {
		case tc.wantErr && (err == nil || !strings.Contains(err.Error(), "--in-flow-delay")):
			t.Errorf("relay %q: Check: %v, want an error naming --in-flow-delay", tc.args, err)
		case !tc.wantErr && (err != nil || cfg.InFlowDelay != tc.want):
			t.Errorf("relay %q: InFlowDelay %s, error %v; want %s", tc.args, cfg.InFlowDelay, err, tc.want)
		}
	}
}

// The outbound TLS flags are judged before the relay starts: a mistake is
// a usage error naming the flag.
func TestOutboundTLSFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		flag string // "" for no error
	}{
		{nil, ""},
		{[]string{"--dns-server", "127.0.0.1:5353", "--dns-dnssec"}, ""},
		{[]string{"--dns-server", "192.0.2.1:53", "--dns-dnssec"}, "--dns-dnssec"},
		{[]string{"--dns-server", "192.0.2.1:53"}, ""},
		{[]string{"--mta-sts-port", "0"}, "--mta-sts-port"},
		{[]string{"--mta-sts=false", "--mta-sts-port", "0"}, ""},
		{[]string{"--tls-rpt-submitter", "a!b"}, "--tls-rpt-submitter"},
		{[]string{"--tls-rpt-from", "nobody"}, "--tls-rpt-from"},
		{[]string{"--tls-rpt-from", "tlsrpt@example.com"}, ""},
	} {
		var cfg relay.Config
		fs := flag.NewFlagSet("relay", flag.ContinueOnError)
		cfg.BindFlags(fs)
		if err := fs.Parse(append([]string{"--manifests", "x"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		err := cfg.Check()
		switch {
		case tc.flag == "" && err != nil:
			t.Errorf("relay %q: %v", tc.args, err)
		case tc.flag != "" && (err == nil || !strings.Contains(err.Error(), tc.flag)):
			t.Errorf("relay %q: Check: %v, want an error naming %s", tc.args, err, tc.flag)
		}
	}
}

// TestShapingFlag: traffic shaping is on unless --shaping=false.
func TestShapingFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want bool
	}{
		{nil, true},
		{[]string{"--shaping"}, true},
		{[]string{"--shaping=false"}, false},
	} {
		var cfg relay.Config
		fs := flag.NewFlagSet("relay", flag.ContinueOnError)
		cfg.BindFlags(fs)
		if err := fs.Parse(append([]string{"--manifests", "x"}, tc.args...)); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Check(); err != nil {
			t.Fatalf("relay %q: %v", tc.args, err)
		}
		if cfg.Shaping != tc.want {
			t.Errorf("relay %q: Shaping %t, want %t", tc.args, cfg.Shaping, tc.want)
		}
	}
}
