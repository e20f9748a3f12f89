package routing

import (
	"net/netip"
	"testing"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// TestSigningDomain: a message whose From field is in another signing
// SenderDomain of the sender's namespace, one the client may send as, is
// signed by that domain, so that it aligns for DMARC (RFC 7489 section
// 3.1.1); in every other case by the sender's domain, as before.
func TestSigningDomain(t *testing.T) {
	in := tenantFixture(t)
	in.SenderDomains = append(in.SenderDomains,
		senderDomain("app", "news", "news.test", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmEd25519)),
		senderDomain("app", "nokey", "nokey.test", 0, signedWith("missing", v1alpha1.DKIMAlgorithmEd25519)),
		senderDomain("other", "signs", "signs.test", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmEd25519)),
	)
	// The loopback client may send as the other namespace's domains too:
	// its key still does not sign app's mail.
	in.TrustedNetworks = append(in.TrustedNetworks, trustedNetwork("other", "lo", []string{"127.0.0.0/24"}))
	in.Secrets = append(in.Secrets, keySecret("other", "dkim", testKeys().ed25519))

	tests := []struct {
		desc, client, identity, sender, from string
		want                                 string // "" for nil
	}{
		{"no From domain", "127.0.0.1", "", "alice@example.com", "", "example.com"},
		{"the sender's own domain", "127.0.0.1", "", "alice@example.com", "example.com", "example.com"},
		{"another signing domain of the namespace", "127.0.0.1", "", "alice@example.com", "news.test", "news.test"},
		{"compared as the table keys it", "127.0.0.1", "", "alice@example.com", "NEWS.Test", "news.test"},
		{"with the AUTH identity the network requires", "10.244.7.7", "app/mailer", "alice@example.com", "news.test", "news.test"},
		{"a sender domain that does not sign", "127.0.0.1", "", "marketing@billing.example.com", "example.com", "example.com"},
		{"its key unavailable: still the From domain's (refused for now)", "127.0.0.1", "", "alice@example.com", "nokey.test", "nokey.test"},
		{"a From domain that does not sign", "127.0.0.1", "", "alice@example.com", "billing.example.com", "example.com"},
		{"a subdomain of a SenderDomain is not one", "127.0.0.1", "", "alice@example.com", "mail.news.test", "example.com"},
		{"an unknown From domain", "127.0.0.1", "", "alice@example.com", "unknown.test", "example.com"},
		{"another namespace's domain the client may send as", "127.0.0.1", "", "alice@example.com", "signs.test", "example.com"},
		{"the other way round", "127.0.0.1", "", "x@signs.test", "example.com", "signs.test"},
		{"a client that may not send as the From domain", "10.244.7.7", "other/mailer", "alice@example.com", "news.test", "example.com"},
		{"routed mail is the smart host's: never signed", "127.0.0.1", "", "invoices@billing.example.com", "example.com", "billing.example.com"},
		{"a sender domain not in the table", "127.0.0.1", "", "x@gone.test", "news.test", ""},
	}
	for _, tbl := range compiledAndDecoded(t, in) {
		if d := tbl.Domain("nokey.test"); d == nil || d.SigningUnavailable == "" || !d.Signs() {
			t.Fatalf("fixture: nokey.test %+v, want a signing domain without its key", d)
		}
		for _, tt := range tests {
			got := ""
			if d := tbl.SigningDomain(netip.MustParseAddr(tt.client), tt.identity, tt.sender, tt.from); d != nil {
				got = d.Name
			}
			if got != tt.want {
				t.Errorf("%s: SigningDomain(%s, %q, %q, %q) = %q, want %q", tt.desc, tt.client, tt.identity, tt.sender, tt.from, got, tt.want)
			}
		}
	}
}
