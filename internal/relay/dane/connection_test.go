package dane

import (
	"crypto/tls"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/postgate/postgate/internal/testenv"
)

// handshake runs a TLS handshake over loopback between a server presenting
// cert and a client that checks it with verify only, and returns the
// client's error.
func handshake(t *testing.T, cert *testenv.Cert, verify func(tls.ConnectionState) error) error {
	t.Helper()
	ln, err := net.Listen("tcp", testenv.DefaultAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	served := make(chan struct{})
	go func() {
		defer close(served)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer func() { _ = conn.Close() }()
		// The server's own error is the client's alert when verify fails.
		_ = tls.Server(conn, cert.ServerConfig()).HandshakeContext(t.Context())
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	client := tls.Client(conn, &tls.Config{
		ServerName:         "mx.example.net", // the TLSA base domain (RFC 7672 section 8.1)
		InsecureSkipVerify: true,             // no PKIX: DANE decides
		VerifyConnection:   verify,
		MinVersion:         tls.VersionTLS12,
	})
	err = client.HandshakeContext(t.Context())
	_ = client.Close()
	<-served
	return err
}

func TestVerifyConnection(t *testing.T) {
	p := newPKI(t)
	ta := []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)}
	ee := []Record{tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf)}
	later := func() time.Time { return time.Now().Add(48 * time.Hour) }
	tests := []struct {
		name    string
		cert    *testenv.Cert
		records []Record
		now     func() time.Time
		want    string
	}{
		{"DANE-EE match", p.good, ee, nil, ""},
		{"DANE-EE, another server's key", p.stranger, ee, nil, ResultValidationFailure},
		{"DANE-TA match", p.good, ta, time.Now, ""},
		{"DANE-TA, wrong name", p.wrongName, ta, time.Now, ResultHostMismatch},
		{"DANE-TA, the clock past the leaf's expiry", p.good, ta, later, ResultExpired},
		{"DANE-EE, the clock past the leaf's expiry", p.good, ee, later, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := handshake(t, tt.cert, VerifyConnection(tt.records, mxNames, tt.now))
			if tt.want == "" {
				if err != nil {
					t.Fatalf("handshake: %v, want success", err)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.Result != tt.want {
				t.Fatalf("handshake: %v, want a DANE error with result %q", err, tt.want)
			}
		})
	}
}

// TestVerifyConnectionKeepsItsArguments: the records and names are copied,
// so a caller reusing its slices does not change a connection's policy.
func TestVerifyConnectionKeepsItsArguments(t *testing.T) {
	p := newPKI(t)
	records := []Record{tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2256, p.inter.Cert)}
	names := []string{"mx.example.net"}
	verify := VerifyConnection(records, names, nil)
	records[0], names[0] = Record{}, "elsewhere.example"
	if err := handshake(t, p.good, verify); err != nil {
		t.Fatalf("handshake: %v, want success", err)
	}
}
