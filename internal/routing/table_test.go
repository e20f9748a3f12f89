package routing

import (
	"bytes"
	"crypto/ed25519"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// tenantFixture is two tenants: app (signing example.com, routing
// billing.example.com through a smart host for two senders) and other
// (other.test, behind AUTH).
func tenantFixture(t *testing.T) Input {
	t.Helper()
	keys := testKeys()
	return Input{
		SenderDomains: []v1alpha1.SenderDomain{
			senderDomain("app", "example", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmEd25519), lifetime(2*time.Hour)),
			senderDomain("app", "billing", "billing.example.com", 0, sourceIP("127.0.0.2"), webhook("https://hooks.example.com/x", "hook")),
			senderDomain("other", "other", "other.test", 0),
		},
		RelayRoutes: []v1alpha1.RelayRoute{
			relayRoute("app", "billing", "billing", 0, senders("Invoices@billing.example.com", "receipts@billing.example.com"), credentials("creds")),
			relayRoute("other", "all", "other", 0),
		},
		TrustedNetworks: []v1alpha1.TrustedNetwork{
			trustedNetwork("app", "loopback", []string{"127.0.0.0/8", "::1/128"}),
			trustedNetwork("app", "pods", []string{"10.244.0.0/16", "fd00:10:244::/56"}, authWith(v1alpha1.SMTPAuthRequired, "app-user")),
			trustedNetwork("other", "office", []string{"10.244.1.0/24"}, authWith(v1alpha1.SMTPAuthRequired, "other-user")),
			trustedNetwork("other", "optional", []string{"192.0.2.0/24"}, authWith(v1alpha1.SMTPAuthOptional, "other-user")),
		},
		Secrets: []corev1.Secret{
			keySecret("app", "dkim", keys.ed25519),
			secret("app", "hook", corev1.SecretTypeOpaque, map[string]string{"key": "0123456789abcdef0123"}),
			basicAuthSecret("app", "creds", "billing", "smarthost-pw"),
			basicAuthSecret("app", "app-user", "mailer", "app-pw"),
			basicAuthSecret("other", "other-user", "mailer", "other-pw"),
		},
	}
}

func TestTableMaySend(t *testing.T) {
	tbl := Compile(tenantFixture(t), nil).Table
	tests := []struct {
		client, identity, sender string
		want                     Denial
	}{
		{"127.0.0.1", "", "alice@example.com", Allowed},
		{"127.0.0.1", "", "alice@EXAMPLE.com", Allowed},
		{"::1", "", "alice@billing.example.com", Allowed},
		{"::ffff:127.0.0.1", "", "alice@example.com", Allowed},
		{"198.51.100.7", "", "alice@example.com", DenyUntrusted},
		{"127.0.0.1", "", "alice@unknown.test", DenyUnknownDomain},
		{"198.51.100.7", "", "alice@unknown.test", DenyUntrusted},
		{"192.0.2.200", "", "alice@example.com", DenyDomainNotCovered},
		// A network admits only the domains of its namespace.
		{"127.0.0.1", "", "bob@other.test", DenyDomainNotCovered},
		// AUTH required in the pod network, by a user of the right namespace.
		{"10.244.7.7", "", "alice@example.com", DenyAuthRequired},
		{"10.244.7.7", "app/mailer", "alice@example.com", Allowed},
		{"10.244.7.7", "other/mailer", "alice@example.com", DenyAuthRequired},
		{"fd00:10:244::5", "app/mailer", "alice@example.com", Allowed},
		// 10.244.1.0/24 is in both tenants' networks: each identity sends
		// only as its own namespace's domains.
		{"10.244.1.9", "other/mailer", "bob@other.test", Allowed},
		{"10.244.1.9", "other/mailer", "alice@example.com", DenyAuthRequired},
		{"10.244.1.9", "app/mailer", "bob@other.test", DenyAuthRequired},
		// Optional AUTH admits without credentials.
		{"192.0.2.1", "", "bob@other.test", Allowed},
		{"127.0.0.1", "", "", DenyUnknownDomain},
		{"127.0.0.1", "", "no-at-sign", DenyUnknownDomain},
	}
	for _, tt := range tests {
		if got := tbl.MaySend(netip.MustParseAddr(tt.client), tt.identity, tt.sender); got != tt.want {
			t.Errorf("MaySend(%s, %q, %q) = %v, want %v", tt.client, tt.identity, tt.sender, got, tt.want)
		}
	}
}

// TestTableUTF8Domain: a SenderDomain is written in A-label form; a sender
// whose domain is the same name in UTF-8 (an SMTPUTF8 client, RFC 6531)
// is that domain.
func TestTableUTF8Domain(t *testing.T) {
	in := tenantFixture(t)
	in.SenderDomains = append(in.SenderDomains, senderDomain("app", "buecher", "xn--bcher-kva.example", 0, sourceIP("127.0.0.3")))
	tbl := Compile(in, nil).Table
	for _, sender := range []string{"jörg@bücher.example", "jörg@BÜCHER.example", "joerg@xn--bcher-kva.example"} {
		if d := tbl.MaySend(netip.MustParseAddr("127.0.0.1"), "", sender); d != Allowed {
			t.Errorf("MaySend(%q) = %v", sender, d)
		}
		if dl := tbl.Lookup(sender); dl.Domain == nil || dl.Domain.Name != "xn--bcher-kva.example" {
			t.Errorf("Lookup(%q) = %+v", sender, dl)
		}
	}
	if d := tbl.MaySend(netip.MustParseAddr("127.0.0.1"), "", "jörg@bucher.example"); d != DenyUnknownDomain {
		t.Errorf("another name: %v", d)
	}
}

func TestTableAuthenticate(t *testing.T) {
	tbl := Compile(tenantFixture(t), nil).Table
	tests := []struct {
		client, user, password, want string
	}{
		{"10.244.7.7", "mailer", "app-pw", "app/mailer"},
		{"10.244.7.7", "app/mailer", "app-pw", "app/mailer"},
		{"10.244.7.7", "mailer", "wrong", ""},
		{"10.244.7.7", "mailer", "other-pw", ""}, // other's network does not contain this client
		{"10.244.1.9", "mailer", "other-pw", "other/mailer"},
		{"10.244.1.9", "mailer", "app-pw", "app/mailer"},
		{"10.244.1.9", "other/mailer", "app-pw", ""},
		{"127.0.0.1", "mailer", "app-pw", ""}, // loopback network has no users
		{"198.51.100.1", "mailer", "app-pw", ""},
	}
	for _, tt := range tests {
		if got := tbl.Authenticate(netip.MustParseAddr(tt.client), tt.user, tt.password); got != tt.want {
			t.Errorf("Authenticate(%s, %q, %q) = %q, want %q", tt.client, tt.user, tt.password, got, tt.want)
		}
	}
	if !tbl.AuthOffered(netip.MustParseAddr("10.244.7.7")) || tbl.AuthOffered(netip.MustParseAddr("127.0.0.1")) {
		t.Error("AuthOffered: want true in the pod network, false on loopback")
	}
}

// TestTableHoldsNoPasswords: the table carries salted hashes of AUTH
// passwords, never the passwords (docs/design.md contract 3).
func TestTableHoldsNoPasswords(t *testing.T) {
	idx, shards, err := Encode(Compile(tenantFixture(t), nil).Table, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, s := range shards {
		m[s.Name] = s.Data
	}
	var all bytes.Buffer
	for _, ref := range idx.Shards {
		raw, err := gunzip(m[ref.Name])
		if err != nil {
			t.Fatal(err)
		}
		all.Write(raw)
	}
	for _, pw := range []string{"app-pw", "other-pw"} {
		if bytes.Contains(all.Bytes(), []byte(pw)) {
			t.Errorf("encoded table contains the AUTH password %q", pw)
		}
	}
	if !bytes.Contains(all.Bytes(), []byte("smarthost-pw")) {
		t.Error("encoded table lacks the smart-host password the relay needs to authenticate")
	}
}

func TestTableLookup(t *testing.T) {
	tbl := Compile(tenantFixture(t), nil).Table
	tests := []struct {
		sender       string
		wantDomain   string
		wantRoute    string
		wantDKIM     bool
		wantSource   string
		wantLifetime time.Duration
	}{
		{"alice@example.com", "example.com", "", true, "", 2 * time.Hour},
		{"invoices@billing.example.com", "billing.example.com", "smarthost.relay.test", false, "127.0.0.2", DefaultMaxQueueLifetime},
		{"RECEIPTS@Billing.Example.com", "billing.example.com", "smarthost.relay.test", false, "127.0.0.2", DefaultMaxQueueLifetime},
		// Not a listed sender: MX, still from the dedicated source IP.
		{"marketing@billing.example.com", "billing.example.com", "", false, "127.0.0.2", DefaultMaxQueueLifetime},
		// A route without a sender list carries every sender.
		{"anyone@other.test", "other.test", "smarthost.relay.test", false, "", DefaultMaxQueueLifetime},
		// Unknown domains (removed since accepted): MX with defaults.
		{"x@gone.test", "", "", false, "", DefaultMaxQueueLifetime},
	}
	for _, tt := range tests {
		d := tbl.Lookup(tt.sender)
		gotDomain, gotRoute, gotSource := "", "", ""
		if d.Domain != nil {
			gotDomain = d.Domain.Name
			if d.Domain.SourceIP.IsValid() {
				gotSource = d.Domain.SourceIP.String()
			}
		}
		if d.Route != nil {
			gotRoute = d.Route.Host
		}
		gotDKIM := d.Domain != nil && d.Domain.DKIM != nil
		if gotDomain != tt.wantDomain || gotRoute != tt.wantRoute || gotDKIM != tt.wantDKIM || gotSource != tt.wantSource || d.MaxQueueLifetime() != tt.wantLifetime {
			t.Errorf("Lookup(%q) = domain %q route %q dkim %v source %q lifetime %s; want %q %q %v %q %s", tt.sender,
				gotDomain, gotRoute, gotDKIM, gotSource, d.MaxQueueLifetime(), tt.wantDomain, tt.wantRoute, tt.wantDKIM, tt.wantSource, tt.wantLifetime)
		}
	}
	d := tbl.Lookup("invoices@billing.example.com")
	if r := d.Route; r.Username != "billing" || r.Password != "smarthost-pw" || r.Port != 587 || r.TLSPolicy != v1alpha1.TLSPolicyRequired {
		t.Errorf("route details: %+v", r)
	}
	if w := d.Domain.Webhook; w == nil || w.URL != "https://hooks.example.com/x" || string(w.HMACKey) != "0123456789abcdef0123" {
		t.Errorf("webhook: %+v", w)
	}
	if k := tbl.Lookup("a@example.com").Domain.DKIM; k.Selector != "s1" || k.Algorithm != v1alpha1.DKIMAlgorithmEd25519 {
		t.Errorf("dkim: %+v", k)
	} else if _, ok := k.Signer.(ed25519.PrivateKey); !ok {
		t.Errorf("dkim signer is %T, want ed25519.PrivateKey", k.Signer)
	}
}

func TestDKIMRecord(t *testing.T) {
	r := Compile(tenantFixture(t), nil)
	v := mustVerdict(t, r, sdKind, "app", "example")
	if v.DKIM == nil || v.DKIM.Name != "s1._domainkey.example.com" || v.DKIM.SecretName != "dkim" {
		t.Fatalf("DKIM record: %+v", v.DKIM)
	}
	pub := r.Table.Domain("example.com").DKIM.Signer.Public().(ed25519.PublicKey)
	if !strings.HasPrefix(v.DKIM.Value, "v=DKIM1; k=ed25519; p=") || len(strings.TrimPrefix(v.DKIM.Value, "v=DKIM1; k=ed25519; p=")) != 44 || len(pub) != 32 {
		t.Errorf("DKIM record value %q: want the base64 of the raw 32-byte key (RFC 8463)", v.DKIM.Value)
	}
}

func TestTableContains(t *testing.T) {
	tbl := Compile(tenantFixture(t), nil).Table
	key := ObjectKey{KindRelayRoute, "app", "billing"}
	if !tbl.Contains(key, 1) || tbl.Contains(key, 2) {
		t.Errorf("Contains(%v): want generation 1 and not 2", key)
	}
	if tbl.Contains(ObjectKey{KindRelayRoute, "app", "nope"}, 1) {
		t.Error("Contains: an unknown object")
	}
	if got := len(tbl.Objects()); got != 9 {
		t.Errorf("Objects: %d, want 9 (3 domains, 2 routes, 4 networks)", got)
	}
}
