// Package schematest holds the table of objects that the CRD schemas of
// package v1alpha1 must accept or refuse, with fragments of the API server's
// refusals. api/v1alpha1's tests run it against a real API server, and
// relay/manifest's offline validator runs the same table, which proves the two
// agree.
package schematest

import (
	"fmt"
	"strings"
)

// Object is a manifest's kind and its spec as YAML, as a user writes it:
// values the Go types cannot hold (200h as a string, unknown enum values)
// reach the validator as they would from kubectl.
type Object struct {
	Kind string
	Spec string
}

// Case is one row: an object, and the fragments of the refusal (the field
// path first); none when the object must be accepted.
type Case struct {
	Desc      string
	Object    Object
	WantError []string
}

func senderDomain(spec string) Object   { return Object{"SenderDomain", spec} }
func relayRoute(spec string) Object     { return Object{"RelayRoute", spec} }
func trustedNetwork(spec string) Object { return Object{"TrustedNetwork", spec} }

const routeTarget = "senderDomainRef: {name: sd}\n"

// Cases returns the table.
func Cases() []Case {
	longLabel := strings.Repeat("a", 64)
	maxDomain := "a" + strings.Repeat("abcdefghi.", 24) + "example.test"
	longDomain := "a" + maxDomain
	if len(maxDomain) != 253 {
		panic(fmt.Sprintf("fixture: maxDomain has %d characters, want 253", len(maxDomain)))
	}
	var elevenAddresses, sixtyFiveCIDRs, seventeenRefs strings.Builder
	for i := range 11 {
		fmt.Fprintf(&elevenAddresses, "- user%d@example.com\n", i)
	}
	for i := range 65 {
		fmt.Fprintf(&sixtyFiveCIDRs, "- 10.%d.0.0/16\n", i)
	}
	for i := range 17 {
		fmt.Fprintf(&seventeenRefs, "  - name: user%d\n", i)
	}
	return []Case{
		// SenderDomain: domain.
		{"minimal sender domain", senderDomain("domain: example.com"), nil},
		{"IDNA domain", senderDomain("domain: xn--bcher-kva.example"), nil},
		{"domain of 253 characters", senderDomain("domain: " + maxDomain), nil},
		{"missing domain", senderDomain("sourceIP: 192.0.2.1"), []string{"spec.domain", "Required value"}},
		{"uppercase domain", senderDomain("domain: Example.com"), []string{"spec.domain", "lowercase fully-qualified domain name"}},
		{"underscore label", senderDomain("domain: my_app.example.com"), []string{"spec.domain", "lowercase fully-qualified domain name"}},
		{"single-label domain", senderDomain("domain: localhost"), []string{"spec.domain", "at least two labels"}},
		{"IPv4 literal as domain", senderDomain("domain: 192.0.2.1"), []string{"spec.domain", "no IP address"}},
		{"bracketed address literal", senderDomain("domain: '[192.0.2.1]'"), []string{"spec.domain", "no IP address"}},
		{"trailing dot", senderDomain("domain: example.com."), []string{"spec.domain", "no trailing dot"}},
		{"label starting with hyphen", senderDomain("domain: -mail.example.com"), []string{"spec.domain", "RFC 1123 labels"}},
		{"label of 64 characters", senderDomain("domain: " + longLabel + ".example.com"), []string{"spec.domain", "RFC 1123 labels"}},
		{"domain over 253 characters", senderDomain("domain: " + longDomain), []string{"spec.domain", "253"}},

		// SenderDomain: signing.
		{"generated Ed25519 key", senderDomain("domain: example.com\nsigning: {selector: s1, algorithm: Ed25519, generate: {}}"), nil},
		{"key from a Secret", senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim, key: private.key}}"), nil},
		{"selector with uppercase and underscore", senderDomain("domain: example.com\nsigning: {selector: Sel_1, generate: {}}"), []string{"spec.signing.selector", "must be a DNS label"}},
		{"selector of two labels", senderDomain("domain: example.com\nsigning: {selector: a.b, generate: {}}"), []string{"spec.signing.selector", "must be a DNS label"}},
		{"empty selector", senderDomain("domain: example.com\nsigning: {selector: '', generate: {}}"), []string{"spec.signing.selector"}},
		{"both key reference and generate", senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim}, generate: {}}"), []string{"spec.signing", "exactly one of keySecretRef and generate"}},
		{"neither key reference nor generate", senderDomain("domain: example.com\nsigning: {selector: s1}"), []string{"spec.signing", "exactly one of keySecretRef and generate"}},
		{"RSA-1024 key", senderDomain("domain: example.com\nsigning: {selector: s1, algorithm: RSA1024, generate: {}}"), []string{"spec.signing.algorithm", `supported values: "RSA2048", "Ed25519"`}},
		{"Secret key with a slash", senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim, key: a/b}}"), []string{"spec.signing.keySecretRef.key", "must be a Secret data key"}},
		{"generated Secret name with underscore", senderDomain("domain: example.com\nsigning: {selector: s1, generate: {secretName: dkim_key}}"), []string{"spec.signing.generate.secretName", "must be a valid Secret name"}},

		// SenderDomain: sourceIP.
		{"IPv6 source address", senderDomain("domain: example.com\nsourceIP: 2001:db8::10"), nil},
		{"IPv6 source address with a prefix length", senderDomain("domain: example.com\nsourceIP: 2001:db8::10/64"), []string{"spec.sourceIP", "without a prefix length"}},
		{"IPv4 source address with a prefix length", senderDomain("domain: example.com\nsourceIP: 192.0.2.10/32"), []string{"spec.sourceIP", "without a prefix length"}},
		{"source address out of range", senderDomain("domain: example.com\nsourceIP: 192.0.2.300"), []string{"spec.sourceIP", "single IPv4 or IPv6 address"}},
		{"host name as source address", senderDomain("domain: example.com\nsourceIP: relay.example.com"), []string{"spec.sourceIP", "single IPv4 or IPv6 address"}},

		// SenderDomain: delivery.
		{"lifetime 120h", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 120h}"), nil},
		{"lifetime 1m", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 1m}"), nil},
		{"lifetime 200h", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 200h}"), []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}},
		{"lifetime 30s", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 30s}"), []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}},
		{"lifetime in days", senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 2d}"), []string{"spec.delivery.maxQueueLifetime"}},
		{"unknown MX TLS policy", senderDomain("domain: example.com\ndelivery: {tlsPolicy: Strict}"), []string{"spec.delivery.tlsPolicy", "Unsupported value"}},
		{"https webhook", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com/postgate', hmacSecretRef: {name: hook}}}"), nil},
		{"http webhook on loopback", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://127.0.0.1:8080/hook', hmacSecretRef: {name: hook}}}"), nil},
		{"http webhook on IPv6 loopback", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://[::1]:8080/hook', hmacSecretRef: {name: hook}}}"), nil},
		{"http webhook elsewhere", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://hooks.example.com/postgate', hmacSecretRef: {name: hook}}}"), []string{"spec.delivery.webhook.url", "must use https"}},
		{"relative webhook URL", senderDomain("domain: example.com\ndelivery: {webhook: {url: '/postgate/hook', hmacSecretRef: {name: hook}}}"), []string{"spec.delivery.webhook.url", "absolute URL"}},
		{"webhook without HMAC Secret", senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com/'}}"), []string{"spec.delivery.webhook.hmacSecretRef", "Required value"}},

		// RelayRoute.
		{"minimal route", relayRoute(routeTarget + "target: {host: smarthost.relay.test}"), nil},
		{"implicit TLS on 465", relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 465, tlsMode: Implicit, tlsPolicy: Verify, caBundleSecretRef: {name: ca}, credentialsSecretRef: {name: creds}}"), nil},
		{"missing sender domain reference", relayRoute("target: {host: smarthost.relay.test}"), []string{"spec.senderDomainRef", "Required value"}},
		{"missing target", relayRoute(routeTarget), []string{"spec.target", "Required value"}},
		{"IPv4 address as target", relayRoute(routeTarget + "target: {host: 192.0.2.25}"), []string{"spec.target.host", "no IP address"}},
		{"IPv6 address as target", relayRoute(routeTarget + "target: {host: '2001:db8::25'}"), []string{"spec.target.host", "no IP address"}},
		{"single-label target", relayRoute(routeTarget + "target: {host: smarthost}"), []string{"spec.target.host", "at least two labels"}},
		{"port 0", relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 0}"), []string{"spec.target.port", "should be greater than or equal to 1"}},
		{"port 65536", relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 65536}"), []string{"spec.target.port", "should be less than or equal to 65535"}},
		{"unknown TLS policy", relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Strict}"), []string{"spec.target.tlsPolicy", `supported values: "None", "Opportunistic", "Required", "Verify"`}},
		{"unknown TLS mode", relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsMode: SSL}"), []string{"spec.target.tlsMode", `supported values: "STARTTLS", "Implicit"`}},
		{"credentials without required TLS", relayRoute(routeTarget + "target: {host: smarthost.relay.test, credentialsSecretRef: {name: creds}}"), []string{"spec.target", "credentials are never sent without TLS"}},
		{"CA bundle without Verify", relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Required, caBundleSecretRef: {name: ca}}"), []string{"spec.target", "caBundleSecretRef is used only with tlsPolicy Verify"}},
		{"implicit TLS without TLS", relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsMode: Implicit, tlsPolicy: None}"), []string{"spec.target", "tlsMode Implicit cannot be combined with tlsPolicy None"}},
		{"ten sender addresses", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses:\n" + strings.Join(strings.Split(elevenAddresses.String(), "\n")[:10], "\n")), nil},
		{"eleven sender addresses", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses:\n" + elevenAddresses.String()), []string{"spec.senderAddresses", "must have at most 10 items"}},
		{"duplicate sender address", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: [a@example.com, a@example.com]"), []string{"spec.senderAddresses[1]", "Duplicate value"}},
		{"sender address without @", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: [billing.example.com]"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"sender address with two @", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['a@b@example.com']"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"sender address with a space", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john doe@example.com']"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"sender address with a double dot", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john..doe@example.com']"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"sender address with an IP literal", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john@[192.0.2.1]']"), []string{"spec.senderAddresses[0]", "must be an email address"}},
		{"local part of 65 characters", relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['" + strings.Repeat("a", 65) + "@example.com']"), []string{"spec.senderAddresses[0]", "at most 64 characters"}},

		// TrustedNetwork.
		{"IPv4 and IPv6 networks", trustedNetwork("cidrs: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7/32]"), nil},
		{"network with AUTH", trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {secretRefs: [{name: app}]}"), nil},
		{"no networks", trustedNetwork("cidrs: []"), []string{"spec.cidrs", "should have at least 1 items"}},
		{"missing networks", trustedNetwork("authentication: {secretRefs: [{name: app}]}"), []string{"spec.cidrs", "Required value"}},
		{"prefix length 33", trustedNetwork("cidrs: [10.0.0.0/33]"), []string{"spec.cidrs[0]", "must be a network in CIDR notation"}},
		{"address without prefix length", trustedNetwork("cidrs: [10.0.0.1]"), []string{"spec.cidrs[0]", "must be a network in CIDR notation"}},
		{"host bits set", trustedNetwork("cidrs: [10.1.2.3/8]"), []string{"spec.cidrs[0]", "must be written as its network address"}},
		{"IPv6 host bits set", trustedNetwork("cidrs: ['2001:db8::1/32']"), []string{"spec.cidrs[0]", "must be written as its network address"}},
		{"duplicate network", trustedNetwork("cidrs: [10.0.0.0/8, 10.0.0.0/8]"), []string{"spec.cidrs[1]", "Duplicate value"}},
		{"65 networks", trustedNetwork("cidrs:\n" + sixtyFiveCIDRs.String()), []string{"spec.cidrs", "must have at most 64 items"}},
		{"AUTH without Secrets", trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {secretRefs: []}"), []string{"spec.authentication.secretRefs", "should have at least 1 items"}},
		{"17 credential Secrets", trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication:\n secretRefs:\n" + seventeenRefs.String()), []string{"spec.authentication.secretRefs", "must have at most 16 items"}},
		{"unknown AUTH mode", trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {mode: Sometimes, secretRefs: [{name: app}]}"), []string{"spec.authentication.mode", `supported values: "Required", "Optional"`}},
	}
}
