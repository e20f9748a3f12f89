package routing

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// FuzzCompile feeds arbitrary strings where the schema would normally
// stand guard (the standalone relay and postgate check compile manifests
// that no API server has seen) and checks the compiler's promises: no
// panic, a verdict per object, at most one accepted owner per domain, a
// table that survives Encode and Decode, and lookups that do not panic.
func FuzzCompile(f *testing.F) {
	f.Add("example.com", "example.com", "10.0.0.0/8", "a@example.com", "127.0.0.1", "s1", "", "user", int64(0), uint8(0))
	f.Add("Example.COM", "b.example.com", "0.0.0.0/0", "a@example.org", "::1", "S_1", "not pem", "", int64(-5), uint8(3))
	f.Add("a.b", "a.b", "::/0", "@", "10.1.2.3", "", "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n", "a/b", int64(1<<40), uint8(255))
	f.Fuzz(func(t *testing.T, domain1, domain2, cidr, sender, client, selector, keyPEM, user string, lifetimeNs int64, flags uint8) {
		var sd1Opts []sdOpt
		if flags&1 != 0 {
			sd1Opts = append(sd1Opts, func(sd *v1alpha1.SenderDomain) {
				sd.Spec.Signing = &v1alpha1.DKIMSigning{Selector: v1alpha1.DKIMSelector(selector), Algorithm: v1alpha1.DKIMAlgorithmEd25519,
					KeySecretRef: &v1alpha1.SecretKeyReference{Name: "key"}}
			})
		}
		if flags&2 != 0 {
			sd1Opts = append(sd1Opts, lifetime(time.Duration(lifetimeNs)), sourceIP(client))
		}
		in := Input{
			SenderDomains: []v1alpha1.SenderDomain{
				senderDomain("a", "one", domain1, int(flags>>4), sd1Opts...),
				senderDomain("b", "two", domain2, int(flags&0xf)),
			},
			RelayRoutes: []v1alpha1.RelayRoute{
				relayRoute("a", "r", "one", 0, senders(sender), target(domain2)),
			},
			TrustedNetworks: []v1alpha1.TrustedNetwork{
				trustedNetwork("a", "n", []string{cidr}),
				trustedNetwork("b", "n", strings.Split(cidr, ","), authWith(v1alpha1.SMTPAuthMode(selector), "u")),
			},
			Secrets: []corev1.Secret{
				keySecret("a", "key", keyPEM),
				basicAuthSecret("b", "u", user, keyPEM),
			},
			SecretsIncomplete: flags&4 != 0,
		}
		r := Compile(in, NewCache())
		if len(r.Verdicts) != 5 {
			t.Fatalf("%d verdicts for 5 objects", len(r.Verdicts))
		}
		owners := 0
		for _, v := range r.Verdicts {
			if v.Object.Kind == KindSenderDomain && !v.Refused() && domain1 == domain2 {
				owners++
			}
			_ = v.Conditions(ProgrammedUnknown())
		}
		if owners > 1 {
			t.Fatalf("two accepted owners of %q", domain1)
		}
		idx, shards, err := Encode(r.Table, 1, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(idx, shardMap(shards), nil)
		if err != nil {
			t.Fatalf("decoding a compiled table: %v", err)
		}
		if addr, err := netip.ParseAddr(client); err == nil {
			a, b := r.Table.MaySend(addr, "", sender), got.MaySend(addr, "", sender)
			if a != b {
				t.Fatalf("MaySend: compiled %v, decoded %v", a, b)
			}
			got.Authenticate(addr, user, keyPEM)
		}
		got.Lookup(sender)
	})
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte("domainClaims:\n- namespaces: [team-*]\n  suffixes: [example.com]\nnetworks:\n  minPrefixIPv4WithoutAuth: 16\n"))
	f.Add([]byte("{}"))
	f.Add([]byte("domainClaims: [{namespaces: ['['], suffixes: [x]}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := ParsePolicy(data)
		if err != nil {
			return
		}
		p.mayClaim("team-a", "mail.example.com")
		for _, v4 := range []bool{true, false} {
			if n := p.minPrefix(v4); n < 1 || n > 128 {
				t.Fatalf("minPrefix(%v) = %d", v4, n)
			}
			if n := p.namespacePrefix(v4); n < 1 || n > 128 {
				t.Fatalf("namespacePrefix(%v) = %d", v4, n)
			}
		}
	})
}

func TestParsePolicy(t *testing.T) {
	tests := []struct {
		yaml    string
		wantErr string
	}{
		{"", ""},
		{"domainClaims:\n- namespaces: [team-a, 'team-b-*']\n  suffixes: [a.example.com]\nnetworks:\n  minPrefixIPv4WithoutAuth: 16\n  minPrefixIPv6WithoutAuth: 48\n", ""},
		{"domainClaim: []", "unknown field"},
		{"domainClaims:\n- namespaces: [team-a]\n", "needs namespaces and suffixes"},
		{"domainClaims:\n- namespaces: ['[']\n  suffixes: [a.example.com]\n", "bad namespace pattern"},
		{"domainClaims:\n- namespaces: [a]\n  suffixes: [Example.COM]\n", "not a lowercase domain name"},
		{"networks:\n  minPrefixIPv4WithoutAuth: 33\n", "not in 0..32"},
		{"networks:\n  namespacePrefixIPv4WithoutAuth: 4\n  namespacePrefixIPv6WithoutAuth: 32\n", ""},
		{"networks:\n  namespacePrefixIPv6WithoutAuth: 129\n", "not in 0..128"},
		// Keys match exactly, as Kubernetes' strict decoding matches them.
		{"DOMAINCLAIMS: []", "unknown field"},
		{"networks:\n  MinPrefixIPv4WithoutAuth: 0\n", "unknown field"},
		{"networks: {}\nnetworks: {}\n", "networks"},
	}
	for _, tt := range tests {
		_, err := ParsePolicy([]byte(tt.yaml))
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("ParsePolicy(%q): %v", tt.yaml, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("ParsePolicy(%q) = %v, want an error containing %q", tt.yaml, err, tt.wantErr)
		}
	}
}
