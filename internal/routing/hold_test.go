package routing

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// A RelayRoute that exists but cannot take effect holds the mail it would
// carry; only its deletion sends the domain's mail by MX.
func TestHoldCompile(t *testing.T) {
	creds := basicAuthSecret("app", "creds", "billing", "smarthost-pw")
	hook := secret("app", "hook", corev1.SecretTypeOpaque, map[string]string{"key": "0123456789abcdef0123"})
	routed := func(opts ...rrOpt) []v1alpha1.RelayRoute {
		return []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 10, append([]rrOpt{credentials("creds")}, opts...)...)}
	}
	domain := []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, webhook("https://hooks.example.com/", "hook"))}
	tests := []struct {
		desc    string
		input   Input
		hold    string // a fragment of the hold reason of alice@example.com; "" for no hold
		route   bool   // alice@example.com is routed
		objects int
	}{
		{
			desc:    "resolved: routed",
			input:   Input{SenderDomains: domain, RelayRoutes: routed(), Secrets: []corev1.Secret{creds, hook}},
			route:   true,
			objects: 2,
		},
		{
			desc:    "credentials Secret missing: held",
			input:   Input{SenderDomains: domain, RelayRoutes: routed(), Secrets: []corev1.Secret{hook}},
			hold:    `RelayRoute app/route cannot take effect: Secret "creds" (target credentials) not found`,
			objects: 2,
		},
		{
			desc:    "CA bundle missing: held",
			input:   Input{SenderDomains: domain, RelayRoutes: routed(caBundle("ca")), Secrets: []corev1.Secret{creds, hook}},
			hold:    `Secret "ca" (CA bundle) not found`,
			objects: 2,
		},
		{
			desc:    "SenderDomain unresolved: held",
			input:   Input{SenderDomains: domain, RelayRoutes: routed(), Secrets: []corev1.Secret{creds}},
			hold:    `its SenderDomain "sd" is not resolved: Secret "hook" (webhook HMAC key) not found`,
			objects: 2,
		},
		{
			desc:    "no route: MX",
			input:   Input{SenderDomains: domain, Secrets: []corev1.Secret{hook}},
			objects: 1,
		},
		{
			desc: "a refused route holds nothing",
			input: Input{SenderDomains: domain, RelayRoutes: routed(senders("x@example.org")),
				Secrets: []corev1.Secret{hook}},
			objects: 1,
		},
		{
			desc: "conflict: the older route holds, the newer holds nothing",
			input: Input{SenderDomains: domain, RelayRoutes: append(routed(),
				relayRoute("app", "newer", "sd", 20)), Secrets: []corev1.Secret{hook}},
			hold:    "RelayRoute app/route cannot take effect",
			objects: 2,
		},
		{
			desc: "conflict: a newer unresolved route does not hold the older one's mail",
			input: Input{SenderDomains: domain, RelayRoutes: append(routed(),
				relayRoute("app", "newer", "sd", 20, credentials("nope"))), Secrets: []corev1.Secret{creds, hook}},
			route:   true,
			objects: 2,
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			in := tt.input
			in.TrustedNetworks = []v1alpha1.TrustedNetwork{trustedNetwork("app", "loopback", []string{"127.0.0.0/8"})}
			for _, tbl := range compiledAndDecoded(t, in) {
				dl := tbl.Lookup("alice@example.com")
				switch {
				case dl.Domain == nil:
					t.Fatal("domain not in the table")
				case tt.hold == "" && dl.Hold != nil:
					t.Errorf("held (%s), want no hold", dl.Hold.Reason)
				case tt.hold != "" && (dl.Hold == nil || !strings.Contains(dl.Hold.Reason, tt.hold)):
					t.Errorf("hold %+v, want a reason containing %q", dl.Hold, tt.hold)
				case tt.hold != "" && (dl.Hold.Route.Name != "route" || dl.Hold.Host != "smarthost.relay.test"):
					t.Errorf("hold names %v at %s, want app/route at smarthost.relay.test", dl.Hold.Route, dl.Hold.Host)
				case (dl.Route != nil) != tt.route:
					t.Errorf("routed %v, want %v", dl.Route != nil, tt.route)
				}
				if got := tbl.MaySend(netip.MustParseAddr("127.0.0.1"), "", "alice@example.com"); got != Allowed {
					t.Errorf("MaySend = %v, want allowed: held mail is accepted, then deferred", got)
				}
				if n := len(tbl.Objects()) - 1; n != tt.objects {
					t.Errorf("table holds %d objects %v, want %d", n, tbl.Objects(), tt.objects)
				}
				if held := tbl.Held(ObjectKey{KindRelayRoute, "app", "route"}); held != (tt.hold != "") {
					t.Errorf("Held(route) = %v, want %v", held, tt.hold != "")
				}
				if held := tbl.Held(ObjectKey{KindSenderDomain, "app", "sd"}); held != (tt.hold != "") {
					t.Errorf("Held(domain) = %v, want %v", held, tt.hold != "")
				}
			}
		})
	}
}

// The hold covers the senders the route would carry, no others.
func TestHoldSenders(t *testing.T) {
	in := Input{
		SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0)},
		RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0, credentials("creds"), senders("Invoices@example.com"))},
	}
	for _, tbl := range compiledAndDecoded(t, in) {
		if dl := tbl.Lookup("invoices@EXAMPLE.com"); dl.Hold == nil || dl.Route != nil {
			t.Errorf("invoices@: %+v, want held", dl)
		}
		if dl := tbl.Lookup("alice@example.com"); dl.Hold != nil || dl.Route != nil || dl.Domain == nil {
			t.Errorf("alice@: %+v, want MX (the route does not carry this sender)", dl)
		}
	}
}

// A signing domain whose key is unavailable stays in the table as such:
// its mail is never accepted unsigned.
func TestSigningUnavailable(t *testing.T) {
	keys := testKeys()
	for _, tt := range []struct {
		desc    string
		secrets []corev1.Secret
		want    string
	}{
		{"missing", nil, `the DKIM key of example.com is unavailable: Secret "dkim" (DKIM key) not found`},
		{"unusable", []corev1.Secret{keySecret("app", "dkim", keys.rsa2048)}, "the key is RSA"},
		{"usable", []corev1.Secret{keySecret("app", "dkim", keys.ed25519)}, ""},
	} {
		t.Run(tt.desc, func(t *testing.T) {
			in := Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmEd25519))},
				Secrets:       tt.secrets,
			}
			r := Compile(in, nil)
			v := mustVerdict(t, r, sdKind, "app", "sd")
			if !v.InTable || (v.Held != "") != (tt.want != "") {
				t.Errorf("verdict InTable %v Held %q", v.InTable, v.Held)
			}
			if tt.want != "" && !strings.Contains(v.Held, "while its DKIM key is unavailable: ") {
				t.Errorf("verdict Held %q does not say the refusal lasts while the key is unavailable", v.Held)
			}
			for _, tbl := range compiledAndDecoded(t, in) {
				d := tbl.Domain("example.com")
				switch {
				case d == nil:
					t.Fatal("domain not in the table")
				case tt.want == "" && (d.DKIM == nil || d.SigningUnavailable != ""):
					t.Errorf("DKIM %v, unavailable %q: want the key", d.DKIM, d.SigningUnavailable)
				case tt.want != "" && (d.DKIM != nil || !strings.Contains(d.SigningUnavailable, tt.want)):
					t.Errorf("DKIM %v, unavailable %q: want no key, unavailable containing %q", d.DKIM, d.SigningUnavailable, tt.want)
				}
			}
		})
	}
}

// The conditions say in words that the mail is held, whatever the relays
// acknowledged: never Pending, never Programmed.
func TestHoldConditions(t *testing.T) {
	r := Compile(Input{
		SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0)},
		RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0, credentials("creds"))},
	}, nil)
	for _, key := range []ObjectKey{{sdKind, "app", "sd"}, {rrKind, "app", "route"}} {
		v := r.Verdict(key)
		for _, p := range []Status{
			statusTrue(v1alpha1.ReasonProgrammed, "every relay"),
			statusFalse(v1alpha1.ReasonPending, "Waiting for every live relay to load routing table version 3"),
			ProgrammedUnknown(),
		} {
			conds := map[v1alpha1.ConditionType]metav1.Condition{}
			for _, c := range v.Conditions(p) {
				conds[v1alpha1.ConditionType(c.Type)] = c
			}
			pc := conds[v1alpha1.ConditionProgrammed]
			if pc.Status != isFals || pc.Reason != string(v1alpha1.ReasonDeliveryHeld) || !strings.Contains(pc.Message, `Secret "creds" (target credentials) not found`) {
				t.Errorf("%s, relays %s: Programmed %s/%s %q, want False/DeliveryHeld naming the Secret", key, p.Reason, pc.Status, pc.Reason, pc.Message)
			}
			if _, ok := conds[v1alpha1.ConditionStalled]; ok || conds[v1alpha1.ConditionReconciling].Status != isTrue {
				t.Errorf("%s: want Reconciling, not Stalled: %v", key, conds)
			}
		}
	}
}

// A relay that predates held entries must refuse a table with one (and
// keep its last table), never read the domain as an ordinary one: the held
// domain's unit has no "domain" member.
func TestHeldUnitUnknownToOldRelays(t *testing.T) {
	in := Input{
		SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0), senderDomain("app", "other", "other.test", 0)},
		RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0, credentials("creds"))},
	}
	idx, shards, err := Encode(Compile(in, nil).Table, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	m := shardMap(shards)
	old := map[string]bool{}
	for _, ref := range idx.Shards {
		raw, err := gunzip(m[ref.Name])
		if err != nil {
			t.Fatal(err)
		}
		// The unit as a relay before held entries reads it.
		var s struct {
			Units []struct {
				Domain  *struct{ Name string } `json:"domain"`
				Network json.RawMessage        `json:"network"`
			} `json:"units"`
		}
		if err := json.Unmarshal(raw, &s); err != nil {
			t.Fatal(err)
		}
		for _, u := range s.Units {
			if u.Domain != nil {
				old[u.Domain.Name] = true
			} else if u.Network == nil {
				old["(unknown unit)"] = true
			}
		}
	}
	if old["example.com"] || !old["(unknown unit)"] || !old["other.test"] {
		t.Errorf("an old relay reads %v: want other.test and an unknown unit, never example.com as a plain domain", old)
	}
}

// compiledAndDecoded returns the compiled table and the same after Encode
// and Decode: the relays run the decoded one.
func compiledAndDecoded(t *testing.T, in Input) []*Table {
	t.Helper()
	tbl := Compile(in, NewCache()).Table
	idx, shards, err := Encode(tbl, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := Decode(idx, shardMap(shards), nil)
	if err != nil {
		t.Fatal(err)
	}
	return []*Table{tbl, dec}
}
