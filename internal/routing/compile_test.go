package routing

import (
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// want is one expected condition of one object. An empty status means the
// condition must be absent.
type want struct {
	kind, ns, name string
	cond           v1alpha1.ConditionType
	status         metav1.ConditionStatus
	reason         v1alpha1.Reason
	message        string // a fragment the message must contain
}

const (
	sdKind = KindSenderDomain
	rrKind = KindRelayRoute
	tnKind = KindTrustedNetwork
	absent = metav1.ConditionStatus("")
	isTrue = metav1.ConditionTrue
	isFals = metav1.ConditionFalse
	isUnkn = metav1.ConditionUnknown
)

func TestCompileRules(t *testing.T) {
	keys := testKeys()
	tests := []struct {
		desc  string
		input Input
		want  []want
	}{
		{
			desc: "oldest SenderDomain owns the domain; the other is conflicted and stalled",
			input: Input{SenderDomains: []v1alpha1.SenderDomain{
				senderDomain("team-b", "newer", "example.com", 20),
				senderDomain("team-a", "older", "example.com", 10),
			}},
			want: []want{
				{sdKind, "team-a", "older", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{sdKind, "team-a", "older", v1alpha1.ConditionStalled, absent, "", ""},
				{sdKind, "team-b", "newer", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonConflicted, "claimed by SenderDomain team-a/older"},
				{sdKind, "team-b", "newer", v1alpha1.ConditionStalled, isTrue, v1alpha1.ReasonConflicted, ""},
				{sdKind, "team-b", "newer", v1alpha1.ConditionReconciling, absent, "", ""},
				{sdKind, "team-b", "newer", v1alpha1.ConditionReady, isFals, v1alpha1.ReasonConflicted, ""},
			},
		},
		{
			desc: "same creation time: namespace/name order decides",
			input: Input{SenderDomains: []v1alpha1.SenderDomain{
				senderDomain("team-b", "a", "example.com", 10),
				senderDomain("team-a", "z", "example.com", 10),
			}},
			want: []want{
				{sdKind, "team-a", "z", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{sdKind, "team-b", "a", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonConflicted, "team-a/z"},
			},
		},
		{
			desc: "oldest RelayRoute is the domain's one target relay",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0)},
				RelayRoutes: []v1alpha1.RelayRoute{
					relayRoute("app", "second", "sd", 20, target("other.relay.test")),
					relayRoute("app", "first", "sd", 10),
				},
			},
			want: []want{
				{rrKind, "app", "first", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, "smarthost.relay.test:587"},
				{rrKind, "app", "second", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonConflicted, "already has RelayRoute app/first"},
				{rrKind, "app", "second", v1alpha1.ConditionStalled, isTrue, v1alpha1.ReasonConflicted, ""},
			},
		},
		{
			desc: "signing exclusivity: the route is refused and the domain says why",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmEd25519))},
				RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 10)},
				Secrets:       []corev1.Secret{keySecret("app", "dkim", keys.ed25519)},
			},
			want: []want{
				{rrKind, "app", "route", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonSigningEnabled, "signed and goes to MX"},
				{rrKind, "app", "route", v1alpha1.ConditionStalled, isTrue, v1alpha1.ReasonSigningEnabled, ""},
				{sdKind, "app", "sd", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{sdKind, "app", "sd", v1alpha1.ConditionRouteRefused, isTrue, v1alpha1.ReasonSigningEnabled, "RelayRoute route refused"},
			},
		},
		{
			desc:  "route to a missing SenderDomain",
			input: Input{RelayRoutes: []v1alpha1.RelayRoute{relayRoute("app", "route", "nope", 0)}},
			want: []want{
				{rrKind, "app", "route", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonSenderDomainNotFound, `SenderDomain "nope" not found in namespace "app"`},
				// It may come later in the same apply: waiting, not failed.
				{rrKind, "app", "route", v1alpha1.ConditionReconciling, isTrue, v1alpha1.ReasonSenderDomainNotFound, ""},
				{rrKind, "app", "route", v1alpha1.ConditionStalled, absent, "", ""},
			},
		},
		{
			desc: "route to a SenderDomain whose Secret is missing: waiting, not failed",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, webhook("https://hooks.example.com/mail", "hmac"))},
				RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0)},
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonSecretNotFound, ""},
				{rrKind, "app", "route", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{rrKind, "app", "route", v1alpha1.ConditionProgrammed, isFals, v1alpha1.ReasonDeliveryHeld, `its SenderDomain "sd" is not resolved`},
				{rrKind, "app", "route", v1alpha1.ConditionReconciling, isTrue, v1alpha1.ReasonDeliveryHeld, ""},
				{rrKind, "app", "route", v1alpha1.ConditionStalled, absent, "", ""},
			},
		},
		{
			desc: "a SenderDomain of another namespace does not count",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("other", "sd", "example.com", 0)},
				RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0)},
			},
			want: []want{
				{rrKind, "app", "route", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonSenderDomainNotFound, ""},
			},
		},
		{
			desc: "route to a conflicted SenderDomain",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{
					senderDomain("owner", "sd", "example.com", 0),
					senderDomain("app", "sd", "example.com", 10),
				},
				RelayRoutes: []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0)},
			},
			want: []want{
				{rrKind, "app", "route", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonSenderDomainNotAccepted, "Conflicted"},
				// Nothing comes by itself: a user must change an object.
				{rrKind, "app", "route", v1alpha1.ConditionStalled, isTrue, v1alpha1.ReasonSenderDomainNotAccepted, ""},
				{rrKind, "app", "route", v1alpha1.ConditionReconciling, absent, "", ""},
			},
		},
		{
			desc: "sender addresses outside the domain",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0)},
				RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0, senders("ok@example.com", "bad@example.org", "sub@mail.example.com"))},
			},
			want: []want{
				{rrKind, "app", "route", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonAddressOutsideDomain, "bad@example.org, sub@mail.example.com"},
			},
		},
		{
			desc: "a refused route does not block a valid newer one",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0)},
				RelayRoutes: []v1alpha1.RelayRoute{
					relayRoute("app", "old-bad", "sd", 0, senders("x@example.org")),
					relayRoute("app", "new-good", "sd", 10),
				},
			},
			want: []want{
				{rrKind, "app", "new-good", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
			},
		},
		{
			desc:  "missing DKIM key Secret: not resolved, reconciling, not stalled",
			input: Input{SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmRSA2048))}},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonSecretNotFound, `Secret "dkim" (DKIM key) not found`},
				{sdKind, "app", "sd", v1alpha1.ConditionReconciling, isTrue, v1alpha1.ReasonSecretNotFound, ""},
				{sdKind, "app", "sd", v1alpha1.ConditionStalled, absent, "", ""},
				{sdKind, "app", "sd", v1alpha1.ConditionProgrammed, isFals, v1alpha1.ReasonDeliveryHeld, "451 4.3.0"},
			},
		},
		{
			desc:  "generated key not created yet: waits for the operator",
			input: Input{SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, generated())}},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonSecretNotFound, `"postgate-dkim-s1.example.com"`},
			},
		},
		{
			desc: "postgate check: a Secret not among the manifests is Unknown",
			input: Input{
				SenderDomains:     []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmRSA2048))},
				SecretsIncomplete: true,
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isUnkn, v1alpha1.ReasonRefNotChecked, "not among the given manifests"},
				{sdKind, "app", "sd", v1alpha1.ConditionReady, isUnkn, v1alpha1.ReasonRefNotChecked, ""},
				{sdKind, "app", "sd", v1alpha1.ConditionReconciling, isTrue, v1alpha1.ReasonRefNotChecked, ""},
			},
		},
		{
			desc:  "postgate check: a key to generate is pending, not unknown",
			input: Input{SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, generated())}, SecretsIncomplete: true},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isTrue, v1alpha1.ReasonResolvedRefs, "generated on first use"},
				{sdKind, "app", "sd", v1alpha1.ConditionProgrammed, isFals, v1alpha1.ReasonPending, "Waiting for the DKIM key to be generated"},
			},
		},
		{
			desc: "operator: a key it generates after the compile is pending, not missing; a refused domain's key does not come",
			input: Input{SenderDomains: []v1alpha1.SenderDomain{
				senderDomain("app", "sd", "example.com", 10, generated()),
				senderDomain("other", "sd", "example.com", 20, generated()),
			}, KeysGeneratedLater: true},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isTrue, v1alpha1.ReasonResolvedRefs, "generated on first use"},
				{sdKind, "app", "sd", v1alpha1.ConditionProgrammed, isFals, v1alpha1.ReasonPending, "Waiting for the DKIM key to be generated"},
				{sdKind, "other", "sd", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonConflicted, ""},
				{sdKind, "other", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonSecretNotFound, ""},
			},
		},
		{
			desc: "Secret without the key",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmRSA2048))},
				Secrets:       []corev1.Secret{secret("app", "dkim", corev1.SecretTypeOpaque, map[string]string{"tls.key": keys.rsa2048})},
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonInvalidSecret, `has no key "private.key"`},
			},
		},
		{
			desc: "bad PEM",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmRSA2048))},
				Secrets:       []corev1.Secret{keySecret("app", "dkim", "-----BEGIN PRIVATE KEY-----\nnot base64!\n-----END PRIVATE KEY-----\n")},
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonInvalidSecret, "no PEM block found"},
			},
		},
		{
			desc: "wrong algorithm",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmRSA2048))},
				Secrets:       []corev1.Secret{keySecret("app", "dkim", keys.ed25519)},
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonInvalidSecret, "the key is Ed25519 but the algorithm is RSA2048"},
			},
		},
		{
			desc: "RSA key too short",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmRSA2048))},
				Secrets:       []corev1.Secret{keySecret("app", "dkim", keys.rsa1024)},
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonInvalidSecret, "1024 bits, fewer than 2048"},
			},
		},
		{
			desc: "usable RSA key: resolved, DKIM record in the verdict",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, signedWith("dkim", v1alpha1.DKIMAlgorithmRSA2048))},
				Secrets:       []corev1.Secret{keySecret("app", "dkim", keys.rsa2048)},
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isTrue, v1alpha1.ReasonResolvedRefs, ""},
				{sdKind, "app", "sd", v1alpha1.ConditionReconciling, isTrue, v1alpha1.ReasonPending, "Not programmed yet"},
			},
		},
		{
			desc: "webhook HMAC key too short",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, webhook("https://hooks.example.com/", "hook"))},
				Secrets:       []corev1.Secret{secret("app", "hook", corev1.SecretTypeOpaque, map[string]string{"key": "short"})},
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonInvalidSecret, "5 bytes, fewer than 16"},
			},
		},
		{
			desc: "route credentials: wrong Secret type, and a missing CA bundle",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0)},
				RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0, credentials("creds"), caBundle("ca"))},
				Secrets:       []corev1.Secret{secret("app", "creds", corev1.SecretTypeOpaque, map[string]string{"username": "u", "password": "p"})},
			},
			want: []want{
				{rrKind, "app", "route", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{rrKind, "app", "route", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonInvalidSecret, `want "kubernetes.io/basic-auth"`},
				{rrKind, "app", "route", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonInvalidSecret, `Secret "ca" (CA bundle) not found`},
			},
		},
		{
			desc: "route whose SenderDomain is unresolved holds the domain's mail",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0, webhook("https://hooks.example.com/", "hook"))},
				RelayRoutes:   []v1alpha1.RelayRoute{relayRoute("app", "route", "sd", 0)},
			},
			want: []want{
				{rrKind, "app", "route", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{rrKind, "app", "route", v1alpha1.ConditionProgrammed, isFals, v1alpha1.ReasonDeliveryHeld, `its SenderDomain "sd" is not resolved: Secret "hook" (webhook HMAC key) not found`},
				{rrKind, "app", "route", v1alpha1.ConditionReconciling, isTrue, v1alpha1.ReasonDeliveryHeld, ""},
				{rrKind, "app", "route", v1alpha1.ConditionStalled, absent, "", ""},
				{sdKind, "app", "sd", v1alpha1.ConditionProgrammed, isFals, v1alpha1.ReasonDeliveryHeld, "Mail from example.com is held"},
			},
		},
		{
			desc: "guardrail: namespace outside its allowed suffixes",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{
					senderDomain("team-a", "ok", "mail.a.example.com", 0),
					senderDomain("team-a", "bad", "b.example.com", 0),
					senderDomain("team-b", "ok", "b.example.com", 10),
				},
				Policy: Policy{DomainClaims: []DomainClaim{
					{Namespaces: []string{"team-a"}, Suffixes: []string{"a.example.com"}},
					{Namespaces: []string{"team-b*"}, Suffixes: []string{"b.example.com"}},
				}},
			},
			want: []want{
				{sdKind, "team-a", "ok", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{sdKind, "team-a", "bad", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonDomainNotAllowed, `namespace "team-a" claim domain b.example.com`},
				{sdKind, "team-a", "bad", v1alpha1.ConditionStalled, isTrue, v1alpha1.ReasonDomainNotAllowed, ""},
				// A refused claim does not block the namespace that may claim it.
				{sdKind, "team-b", "ok", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
			},
		},
		{
			desc: "guardrail: the whole internet without AUTH; the same with AUTH required",
			input: Input{
				TrustedNetworks: []v1alpha1.TrustedNetwork{
					trustedNetwork("app", "open", []string{"10.0.0.0/8", "0.0.0.0/0"}),
					trustedNetwork("app", "open6", []string{"::/0"}, authWith(v1alpha1.SMTPAuthOptional, "user")),
					trustedNetwork("app", "authed", []string{"0.0.0.0/0"}, authWith(v1alpha1.SMTPAuthRequired, "user")),
				},
				Secrets: []corev1.Secret{basicAuthSecret("app", "user", "mailer", "a-long-password")},
			},
			want: []want{
				{tnKind, "app", "open", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonNetworkTooBroad, "0.0.0.0/0 is broader than /8"},
				{tnKind, "app", "open", v1alpha1.ConditionStalled, isTrue, v1alpha1.ReasonNetworkTooBroad, ""},
				{tnKind, "app", "open6", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonNetworkTooBroad, "::/0 is broader than /7"},
				{tnKind, "app", "authed", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{tnKind, "app", "authed", v1alpha1.ConditionResolvedRefs, isTrue, v1alpha1.ReasonResolvedRefs, ""},
			},
		},
		{
			desc: "guardrail: a stricter network policy",
			input: Input{
				TrustedNetworks: []v1alpha1.TrustedNetwork{trustedNetwork("app", "pods", []string{"10.244.0.0/16"})},
				Policy:          Policy{Networks: NetworkPolicy{MinPrefixIPv4: 24}},
			},
			want: []want{
				{tnKind, "app", "pods", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonNetworkTooBroad, "broader than /24"},
			},
		},
		{
			desc: "guardrail: four TrustedNetworks of 64 /8s each would admit all of IPv4",
			input: Input{TrustedNetworks: []v1alpha1.TrustedNetwork{
				trustedNetwork("app", "q1", slashEights(0, 64)),
				trustedNetwork("app", "q2", slashEights(64, 128)),
				trustedNetwork("app", "q3", slashEights(128, 192)),
				trustedNetwork("app", "q4", slashEights(192, 256)),
			}},
			want: []want{
				{tnKind, "app", "q1", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonNetworkTooBroad, "These networks would admit more addresses than one /6 holds"},
				{tnKind, "app", "q4", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonNetworkTooBroad, "more addresses than one /6"},
			},
		},
		{
			desc: "guardrail: a namespace's networks without AUTH are bounded together, the oldest keep their place",
			input: Input{
				TrustedNetworks: []v1alpha1.TrustedNetwork{
					aged(trustedNetwork("app", "private", []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}), 1),
					aged(trustedNetwork("app", "cgnat", []string{"100.64.0.0/10", "127.0.0.0/8"}), 2),
					// The same networks again count once.
					aged(trustedNetwork("app", "again", []string{"10.0.0.0/8", "127.0.0.0/8"}, authWith(v1alpha1.SMTPAuthOptional, "user")), 3),
					aged(trustedNetwork("app", "more", []string{"11.0.0.0/8", "12.0.0.0/8"}), 4),
					// AUTH Required does not count; other namespaces have their own bound.
					aged(trustedNetwork("app", "authed", []string{"0.0.0.0/1"}, authWith(v1alpha1.SMTPAuthRequired, "user")), 5),
					aged(trustedNetwork("other", "more", []string{"11.0.0.0/8", "12.0.0.0/8"}), 6),
				},
				Secrets: []corev1.Secret{basicAuthSecret("app", "user", "mailer", "a-long-password")},
			},
			want: []want{
				{tnKind, "app", "private", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{tnKind, "app", "cgnat", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{tnKind, "app", "again", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{tnKind, "app", "more", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonNetworkTooBroad, `namespace "app" (private, cgnat, again)`},
				{tnKind, "app", "authed", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{tnKind, "other", "more", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
			},
		},
		{
			desc: "guardrail: the namespace bound is a policy setting, for IPv6 too",
			input: Input{
				TrustedNetworks: []v1alpha1.TrustedNetwork{
					aged(trustedNetwork("app", "a", []string{"10.0.0.0/16", "fd00::/48"}), 1),
					aged(trustedNetwork("app", "b", []string{"10.1.0.0/16"}), 2),
					aged(trustedNetwork("app", "c", []string{"fd01::/48"}), 3),
				},
				Policy: Policy{Networks: NetworkPolicy{NamespacePrefixIPv4: 16, NamespacePrefixIPv6: 48}},
			},
			want: []want{
				{tnKind, "app", "a", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{tnKind, "app", "b", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonNetworkTooBroad, "more addresses than one /16"},
				{tnKind, "app", "c", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonNetworkTooBroad, "more addresses than one /48"},
			},
		},
		{
			desc: "AUTH users: missing Secret, and two Secrets with one username",
			input: Input{
				TrustedNetworks: []v1alpha1.TrustedNetwork{
					trustedNetwork("app", "missing", []string{"10.0.0.0/8"}, authWith(v1alpha1.SMTPAuthRequired, "nope")),
					trustedNetwork("app", "dup", []string{"10.0.0.0/8"}, authWith(v1alpha1.SMTPAuthRequired, "u1", "u2")),
				},
				Secrets: []corev1.Secret{basicAuthSecret("app", "u1", "mailer", "pw-one"), basicAuthSecret("app", "u2", "mailer", "pw-two")},
			},
			want: []want{
				{tnKind, "app", "missing", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonSecretNotFound, `Secret "nope" (SMTP AUTH user) not found`},
				{tnKind, "app", "missing", v1alpha1.ConditionReconciling, isTrue, v1alpha1.ReasonSecretNotFound, ""},
				{tnKind, "app", "dup", v1alpha1.ConditionResolvedRefs, isFals, v1alpha1.ReasonInvalidSecret, `both define user "mailer"`},
			},
		},
		{
			desc: "invalid input that bypassed the schema is refused, not compiled",
			input: Input{
				SenderDomains:   []v1alpha1.SenderDomain{senderDomain("app", "sd", "Example.COM", 0)},
				TrustedNetworks: []v1alpha1.TrustedNetwork{trustedNetwork("app", "tn", []string{"10.1.2.3/8"})},
			},
			want: []want{
				{sdKind, "app", "sd", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonInvalid, "spec.domain"},
				{tnKind, "app", "tn", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonInvalid, "network address 10.0.0.0/8"},
			},
		},
		{
			desc: "values that bypassed the schema: unusable source address, IPv4-mapped network, webhook credentials",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{
					senderDomain("app", "zero", "zero.example.com", 0, sourceIP("0.0.0.0")),
					senderDomain("app", "hook", "hook.example.com", 0, webhook("https://user:pw@hooks.example.com/", "hook")),
				},
				TrustedNetworks: []v1alpha1.TrustedNetwork{trustedNetwork("app", "mapped", []string{"::ffff:10.0.0.0/104"})},
			},
			want: []want{
				{sdKind, "app", "zero", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonInvalid, "spec.sourceIP"},
				{sdKind, "app", "hook", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonInvalid, "must not contain credentials"},
				{tnKind, "app", "mapped", v1alpha1.ConditionAccepted, isFals, v1alpha1.ReasonInvalid, "IPv4-mapped"},
			},
		},
		{
			desc: "the schema's syntax: an apostrophe in a sender address, a dotted DKIM selector",
			input: Input{
				SenderDomains: []v1alpha1.SenderDomain{
					senderDomain("app", "billing", "billing.example.com", 0),
					senderDomain("app", "signed", "example.org", 0, generated(), func(sd *v1alpha1.SenderDomain) { sd.Spec.Signing.Selector = "eu.s2024" }),
				},
				RelayRoutes:       []v1alpha1.RelayRoute{relayRoute("app", "rr", "billing", 0, senders("o'brien@billing.example.com"))},
				SecretsIncomplete: true,
			},
			want: []want{
				{rrKind, "app", "rr", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{sdKind, "app", "signed", v1alpha1.ConditionAccepted, isTrue, v1alpha1.ReasonAccepted, ""},
				{sdKind, "app", "signed", v1alpha1.ConditionResolvedRefs, isTrue, v1alpha1.ReasonResolvedRefs, `"postgate-dkim-eu.s2024.example.org"`},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r := Compile(tt.input, NewCache())
			if n := len(tt.input.SenderDomains) + len(tt.input.RelayRoutes) + len(tt.input.TrustedNetworks); len(r.Verdicts) != n {
				t.Errorf("got %d verdicts for %d objects", len(r.Verdicts), n)
			}
			checkSecretRefs(t, tt.input, r)
			for _, w := range tt.want {
				v := mustVerdict(t, r, w.kind, w.ns, w.name)
				var got *metav1.Condition
				for _, c := range v.Conditions(ProgrammedUnknown()) {
					if c.Type == string(w.cond) {
						got = &c
					}
				}
				switch {
				case w.status == absent && got != nil:
					t.Errorf("%s %s/%s: %s present (%s, %s), want absent", w.kind, w.ns, w.name, w.cond, got.Status, got.Reason)
				case w.status == absent:
				case got == nil:
					t.Errorf("%s %s/%s: no %s condition", w.kind, w.ns, w.name, w.cond)
				case got.Status != w.status || got.Reason != string(w.reason) || !strings.Contains(got.Message, w.message):
					t.Errorf("%s %s/%s: %s = %s/%s %q, want %s/%s containing %q", w.kind, w.ns, w.name, w.cond,
						got.Status, got.Reason, got.Message, w.status, w.reason, w.message)
				}
			}
		})
	}
}

// TestConditionsKstatus checks the summary and kstatus flags for every
// Programmed state: Stalled and Reconciling never together, Ready only when
// all three summary conditions are True, observedGeneration everywhere.
func TestConditionsKstatus(t *testing.T) {
	r := Compile(Input{
		SenderDomains: []v1alpha1.SenderDomain{senderDomain("app", "sd", "example.com", 0)},
	}, nil)
	v := mustVerdict(t, r, sdKind, "app", "sd")
	v.Object.Generation = 7
	for _, tc := range []struct {
		programmed      Status
		wantReady       metav1.ConditionStatus
		wantReconciling bool
	}{
		{statusTrue(v1alpha1.ReasonProgrammed, "ok"), isTrue, false},
		{statusFalse(v1alpha1.ReasonNoRelays, "no relay is live"), isFals, true},
		{ProgrammedUnknown(), isUnkn, true},
	} {
		conds := v.Conditions(tc.programmed)
		got := map[v1alpha1.ConditionType]metav1.Condition{}
		for _, c := range conds {
			if c.ObservedGeneration != 7 {
				t.Errorf("%s: observedGeneration %d, want 7", c.Type, c.ObservedGeneration)
			}
			got[v1alpha1.ConditionType(c.Type)] = c
		}
		if got[v1alpha1.ConditionReady].Status != tc.wantReady {
			t.Errorf("programmed %s: Ready %s, want %s", tc.programmed.Status, got[v1alpha1.ConditionReady].Status, tc.wantReady)
		}
		_, reconciling := got[v1alpha1.ConditionReconciling]
		_, stalled := got[v1alpha1.ConditionStalled]
		if reconciling != tc.wantReconciling || stalled {
			t.Errorf("programmed %s: Reconciling %v Stalled %v, want %v false", tc.programmed.Status, reconciling, stalled, tc.wantReconciling)
		}
	}
}

// checkSecretRefs checks that each verdict's SecretRefs are among the
// object's SecretRefs: a Secret the compile reads but a caller does not
// fetch would stay not found.
func checkSecretRefs(t *testing.T, in Input, r *Result) {
	t.Helper()
	check := func(kind string, obj v1alpha1.Object) {
		v := r.Verdict(ObjectKey{Kind: kind, Namespace: obj.GetNamespace(), Name: obj.GetName()})
		if v == nil {
			return
		}
		may := SecretRefs(obj)
		for _, name := range v.SecretRefs {
			if !slices.Contains(may, name) {
				t.Errorf("%s %s/%s: the compile read Secret %q, not in SecretRefs %v", kind, obj.GetNamespace(), obj.GetName(), name, may)
			}
		}
	}
	for i := range in.SenderDomains {
		check(KindSenderDomain, &in.SenderDomains[i])
	}
	for i := range in.RelayRoutes {
		check(KindRelayRoute, &in.RelayRoutes[i])
	}
	for i := range in.TrustedNetworks {
		check(KindTrustedNetwork, &in.TrustedNetworks[i])
	}
}
