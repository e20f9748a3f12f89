// Package schematest holds the table of objects that the CRD schemas of
// package v1alpha1 must accept or refuse, with fragments of the API server's
// refusals. api/v1alpha1's tests run it against a real API server, and
// internal/manifest's offline validator runs the same table, which proves the two
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
// path first); none when the object must be accepted. ForbidError lists
// fragments the refusal must not contain: the misleading messages a
// clearer rule replaces.
type Case struct {
	Desc        string
	Object      Object
	WantError   []string
	ForbidError []string
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
		{Desc: "minimal sender domain", Object: senderDomain("domain: example.com")},
		{Desc: "IDNA domain", Object: senderDomain("domain: xn--bcher-kva.example")},
		{Desc: "domain of 253 characters", Object: senderDomain("domain: " + maxDomain)},
		{Desc: "missing domain", Object: senderDomain("sourceIP: 192.0.2.1"), WantError: []string{"spec.domain", "Required value"}},
		{Desc: "uppercase domain", Object: senderDomain("domain: Example.com"), WantError: []string{"spec.domain", "lowercase fully-qualified domain name"}},
		{Desc: "underscore label", Object: senderDomain("domain: my_app.example.com"), WantError: []string{"spec.domain", "lowercase fully-qualified domain name"}},
		{Desc: "single-label domain", Object: senderDomain("domain: localhost"), WantError: []string{"spec.domain", "at least two labels"}},
		{Desc: "IPv4 literal as domain", Object: senderDomain("domain: 192.0.2.1"), WantError: []string{"spec.domain", "no IP address"}},
		{Desc: "bracketed address literal", Object: senderDomain("domain: '[192.0.2.1]'"), WantError: []string{"spec.domain", "no IP address"}},
		{Desc: "trailing dot", Object: senderDomain("domain: example.com."), WantError: []string{"spec.domain", "no trailing dot"}},
		{Desc: "label starting with hyphen", Object: senderDomain("domain: -mail.example.com"), WantError: []string{"spec.domain", "RFC 1123 labels"}},
		{Desc: "label of 64 characters", Object: senderDomain("domain: " + longLabel + ".example.com"), WantError: []string{"spec.domain", "RFC 1123 labels"}},
		{Desc: "domain over 253 characters", Object: senderDomain("domain: " + longDomain), WantError: []string{"spec.domain", "253"}},

		// SenderDomain: signing.
		{Desc: "generated Ed25519 key", Object: senderDomain("domain: example.com\nsigning: {selector: s1, algorithm: Ed25519, generate: {}}")},
		{Desc: "key from a Secret", Object: senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim, key: private.key}}")},
		{Desc: "selector with uppercase and underscore", Object: senderDomain("domain: example.com\nsigning: {selector: Sel_1, generate: {}}"), WantError: []string{"spec.signing.selector", "must be a DKIM selector"}},
		{Desc: "dotted selector (RFC 6376 section 3.1)", Object: senderDomain("domain: example.com\nsigning: {selector: eu.s2024, generate: {}}")},
		{Desc: "selector with an empty label", Object: senderDomain("domain: example.com\nsigning: {selector: eu..s2024, generate: {}}"), WantError: []string{"spec.signing.selector", "must be a DKIM selector"}},
		{Desc: "selector with a trailing dot", Object: senderDomain("domain: example.com\nsigning: {selector: s2024., generate: {}}"), WantError: []string{"spec.signing.selector", "must be a DKIM selector"}},
		{Desc: "selector too long for its domain", Object: senderDomain("domain: " + maxDomain + "\nsigning: {selector: s1, generate: {}}"), WantError: []string{"spec.signing.selector", "<selector>._domainkey.<domain> must be at most 253 characters"}},
		{Desc: "key Secret name with uppercase and underscore", Object: senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: Dkim_Key}}"), WantError: []string{"spec.signing.keySecretRef.name", "must be an object name"}},
		{Desc: "empty selector", Object: senderDomain("domain: example.com\nsigning: {selector: '', generate: {}}"), WantError: []string{"spec.signing.selector"}},
		{Desc: "both key reference and generate", Object: senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim}, generate: {}}"), WantError: []string{"spec.signing", "exactly one of keySecretRef and generate"}},
		{Desc: "neither key reference nor generate", Object: senderDomain("domain: example.com\nsigning: {selector: s1}"), WantError: []string{"spec.signing", "exactly one of keySecretRef and generate"}},
		{Desc: "RSA-1024 key", Object: senderDomain("domain: example.com\nsigning: {selector: s1, algorithm: RSA1024, generate: {}}"), WantError: []string{"spec.signing.algorithm", `supported values: "RSA2048", "Ed25519"`}},
		{Desc: "Secret key with a slash", Object: senderDomain("domain: example.com\nsigning: {selector: s1, keySecretRef: {name: dkim, key: a/b}}"), WantError: []string{"spec.signing.keySecretRef.key", "must be a Secret data key"}},
		{Desc: "generated Secret name with underscore", Object: senderDomain("domain: example.com\nsigning: {selector: s1, generate: {secretName: dkim_key}}"), WantError: []string{"spec.signing.generate.secretName", "must be a valid Secret name"}},

		// SenderDomain: sourceIP.
		{Desc: "IPv6 source address", Object: senderDomain("domain: example.com\nsourceIP: 2001:db8::10")},
		{Desc: "IPv6 source address with a prefix length", Object: senderDomain("domain: example.com\nsourceIP: 2001:db8::10/64"), WantError: []string{"spec.sourceIP", "without a prefix length"}},
		{Desc: "IPv4 source address with a prefix length", Object: senderDomain("domain: example.com\nsourceIP: 192.0.2.10/32"), WantError: []string{"spec.sourceIP", "without a prefix length"}},
		{Desc: "source address out of range", Object: senderDomain("domain: example.com\nsourceIP: 192.0.2.300"), WantError: []string{"spec.sourceIP", "single IPv4 or IPv6 address"}},
		{Desc: "host name as source address", Object: senderDomain("domain: example.com\nsourceIP: relay.example.com"), WantError: []string{"spec.sourceIP", "single IPv4 or IPv6 address"}},
		{Desc: "loopback source address", Object: senderDomain("domain: example.com\nsourceIP: 127.0.0.2")},
		{Desc: "unspecified IPv4 source address", Object: senderDomain("domain: example.com\nsourceIP: 0.0.0.0"), WantError: []string{"spec.sourceIP", "must be an address mail can be sent from"}},
		{Desc: "unspecified IPv6 source address", Object: senderDomain("domain: example.com\nsourceIP: '::'"), WantError: []string{"spec.sourceIP", "must be an address mail can be sent from"}},
		{Desc: "source address in 0.0.0.0/8", Object: senderDomain("domain: example.com\nsourceIP: 0.1.2.3"), WantError: []string{"spec.sourceIP", "must be an address mail can be sent from"}},
		{Desc: "IPv4 multicast source address", Object: senderDomain("domain: example.com\nsourceIP: 239.1.2.3"), WantError: []string{"spec.sourceIP", "must be an address mail can be sent from"}},
		{Desc: "IPv6 multicast source address", Object: senderDomain("domain: example.com\nsourceIP: 'ff05::2'"), WantError: []string{"spec.sourceIP", "must be an address mail can be sent from"}},
		{Desc: "broadcast source address", Object: senderDomain("domain: example.com\nsourceIP: 255.255.255.255"), WantError: []string{"spec.sourceIP", "must be an address mail can be sent from"}},
		{Desc: "reserved source address", Object: senderDomain("domain: example.com\nsourceIP: 240.0.0.1"), WantError: []string{"spec.sourceIP", "must be an address mail can be sent from"}},

		// SenderDomain: delivery.
		{Desc: "lifetime 120h", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 120h}")},
		{Desc: "lifetime 1m", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 1m}")},
		{Desc: "lifetime 200h", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 200h}"), WantError: []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}},
		{Desc: "lifetime 30s", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 30s}"), WantError: []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}},
		{Desc: "lifetime in days", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 2d}"), WantError: []string{"spec.delivery.maxQueueLifetime"}},
		{Desc: "lifetime of three components", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 1h30m15s}")},
		{Desc: "lifetime 7200m", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 7200m}")},
		{Desc: "lifetime 432000s", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 432000s}")},
		{Desc: "lifetime 10000m", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 10000m}"), WantError: []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}},
		{Desc: "lifetime beyond a duration's range", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 9999999999h}"), WantError: []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}, ForbidError: []string{"conversion", "evaluation"}},
		{Desc: "lifetime of huge nanoseconds", Object: senderDomain("domain: example.com\ndelivery: {maxQueueLifetime: 99999999999999999999ns}"), WantError: []string{"spec.delivery.maxQueueLifetime", "from 1m to 120h"}, ForbidError: []string{"conversion", "evaluation"}},
		{Desc: "unknown MX TLS policy", Object: senderDomain("domain: example.com\ndelivery: {tlsPolicy: Strict}"), WantError: []string{"spec.delivery.tlsPolicy", "Unsupported value"}},
		{Desc: "https webhook", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com/postgate', hmacSecretRef: {name: hook}}}")},
		{Desc: "http webhook on loopback", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://127.0.0.1:8080/hook', hmacSecretRef: {name: hook}}}")},
		{Desc: "http webhook on IPv6 loopback", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://[::1]:8080/hook', hmacSecretRef: {name: hook}}}")},
		{Desc: "http webhook elsewhere", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'http://hooks.example.com/postgate', hmacSecretRef: {name: hook}}}"), WantError: []string{"spec.delivery.webhook.url", "must use https"}},
		{Desc: "relative webhook URL", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: '/postgate/hook', hmacSecretRef: {name: hook}}}"), WantError: []string{"spec.delivery.webhook.url", "absolute URL"}},
		{Desc: "webhook on port 65535", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com:65535/postgate', hmacSecretRef: {name: hook}}}")},
		{Desc: "webhook on an IPv6 address", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://[2001:db8::1]/postgate', hmacSecretRef: {name: hook}}}")},
		{Desc: "webhook port 99999", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com:99999/postgate', hmacSecretRef: {name: hook}}}"), WantError: []string{"spec.delivery.webhook.url", "port from 1 to 65535"}},
		{Desc: "webhook port 0", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com:0/postgate', hmacSecretRef: {name: hook}}}"), WantError: []string{"spec.delivery.webhook.url", "port from 1 to 65535"}},
		{Desc: "webhook URL with a space", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com/post gate', hmacSecretRef: {name: hook}}}"), WantError: []string{"spec.delivery.webhook.url", "must not contain spaces"}},
		{Desc: "webhook host 127.999.999.999", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://127.999.999.999/hook', hmacSecretRef: {name: hook}}}"), WantError: []string{"spec.delivery.webhook.url", "host that is a DNS name or an IP address"}},
		{Desc: "webhook URL with credentials", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://user:pw@hooks.example.com/postgate', hmacSecretRef: {name: hook}}}"), WantError: []string{"spec.delivery.webhook.url", "must not contain credentials"}, ForbidError: []string{"absolute URL"}},
		{Desc: "webhook HMAC Secret name with underscore", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com/', hmacSecretRef: {name: Hook_Key}}}"), WantError: []string{"spec.delivery.webhook.hmacSecretRef.name", "must be an object name"}},
		{Desc: "webhook without HMAC Secret", Object: senderDomain("domain: example.com\ndelivery: {webhook: {url: 'https://hooks.example.com/'}}"), WantError: []string{"spec.delivery.webhook.hmacSecretRef", "Required value"}},

		// RelayRoute.
		{Desc: "minimal route", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}")},
		{Desc: "implicit TLS on 465", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 465, tlsMode: Implicit, tlsPolicy: Verify, caBundleSecretRef: {name: ca}, credentialsSecretRef: {name: creds}}")},
		{Desc: "missing sender domain reference", Object: relayRoute("target: {host: smarthost.relay.test}"), WantError: []string{"spec.senderDomainRef", "Required value"}},
		{Desc: "missing target", Object: relayRoute(routeTarget), WantError: []string{"spec.target", "Required value"}},
		{Desc: "IPv4 address as target", Object: relayRoute(routeTarget + "target: {host: 192.0.2.25}"), WantError: []string{"spec.target.host", "no IP address"}},
		{Desc: "IPv6 address as target", Object: relayRoute(routeTarget + "target: {host: '2001:db8::25'}"), WantError: []string{"spec.target.host", "no IP address"}},
		{Desc: "single-label target", Object: relayRoute(routeTarget + "target: {host: smarthost}"), WantError: []string{"spec.target.host", "at least two labels"}},
		{Desc: "port 0", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 0}"), WantError: []string{"spec.target.port", "should be greater than or equal to 1"}},
		{Desc: "port 65536", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 65536}"), WantError: []string{"spec.target.port", "should be less than or equal to 65535"}},
		{Desc: "unknown TLS policy", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Strict}"), WantError: []string{"spec.target.tlsPolicy", `supported values: "None", "Opportunistic", "Required", "Verify"`}},
		{Desc: "unknown TLS mode", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsMode: SSL}"), WantError: []string{"spec.target.tlsMode", `supported values: "STARTTLS", "Implicit"`}},
		{Desc: "credentials with implicit TLS and policy Opportunistic", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, port: 465, tlsMode: Implicit, tlsPolicy: Opportunistic, credentialsSecretRef: {name: creds}}")},
		{Desc: "credentials with STARTTLS and policy Opportunistic", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Opportunistic, credentialsSecretRef: {name: creds}}"), WantError: []string{"spec.target", "credentials are never sent without TLS"}},
		{Desc: "sender domain reference with uppercase and underscore", Object: relayRoute("senderDomainRef: {name: Dkim_Key}\ntarget: {host: smarthost.relay.test}"), WantError: []string{"spec.senderDomainRef.name", "must be an object name"}},
		{Desc: "credentials Secret name with underscore", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Required, credentialsSecretRef: {name: smart_host}}"), WantError: []string{"spec.target.credentialsSecretRef.name", "must be an object name"}},
		{Desc: "CA bundle Secret name with a slash", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Verify, caBundleSecretRef: {name: a/b}}"), WantError: []string{"spec.target.caBundleSecretRef.name", "must be an object name"}},
		{Desc: "credentials without required TLS", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, credentialsSecretRef: {name: creds}}"), WantError: []string{"spec.target", "credentials are never sent without TLS"}},
		{Desc: "CA bundle without Verify", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsPolicy: Required, caBundleSecretRef: {name: ca}}"), WantError: []string{"spec.target", "caBundleSecretRef is used only with tlsPolicy Verify"}},
		{Desc: "implicit TLS without TLS", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test, tlsMode: Implicit, tlsPolicy: None}"), WantError: []string{"spec.target", "tlsMode Implicit cannot be combined with tlsPolicy None"}},
		{Desc: "ten sender addresses", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses:\n" + strings.Join(strings.Split(elevenAddresses.String(), "\n")[:10], "\n"))},
		{Desc: "eleven sender addresses", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses:\n" + elevenAddresses.String()), WantError: []string{"spec.senderAddresses", "must have at most 10 items"}},
		{Desc: "duplicate sender address", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: [a@example.com, a@example.com]"), WantError: []string{"spec.senderAddresses[1]", "Duplicate value"}},
		{Desc: "sender address without @", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: [billing.example.com]"), WantError: []string{"spec.senderAddresses[0]", "must be an email address"}},
		{Desc: "sender address with two @", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['a@b@example.com']"), WantError: []string{"spec.senderAddresses[0]", "must be an email address"}},
		{Desc: "sender address with a space", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john doe@example.com']"), WantError: []string{"spec.senderAddresses[0]", "must be an email address"}},
		{Desc: "sender address with a double dot", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john..doe@example.com']"), WantError: []string{"spec.senderAddresses[0]", "must be an email address"}},
		{Desc: "sender address with an apostrophe", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: [\"o'brien@billing.example.com\"]")},
		{Desc: "sender address of every atext character", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: [\"a!#$%&'*+-/=?^_`{|}~z@example.com\"]")},
		{Desc: "sender address with a comma", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['a,b@example.com']"), WantError: []string{"spec.senderAddresses[0]", "must be an email address"}},
		{Desc: "sender address with a non-ASCII local part", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['josé@example.com']"), WantError: []string{"spec.senderAddresses[0]", "must be an email address"}},
		{Desc: "sender address with an IP literal", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['john@[192.0.2.1]']"), WantError: []string{"spec.senderAddresses[0]", "must be an email address"}},
		{Desc: "local part of 65 characters", Object: relayRoute(routeTarget + "target: {host: smarthost.relay.test}\nsenderAddresses: ['" + strings.Repeat("a", 65) + "@example.com']"), WantError: []string{"spec.senderAddresses[0]", "at most 64 characters"}},

		// TrustedNetwork.
		{Desc: "IPv4 and IPv6 networks", Object: trustedNetwork("cidrs: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7/32]")},
		{Desc: "network with AUTH", Object: trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {secretRefs: [{name: app}]}")},
		{Desc: "no networks", Object: trustedNetwork("cidrs: []"), WantError: []string{"spec.cidrs", "should have at least 1 items"}},
		{Desc: "missing networks", Object: trustedNetwork("authentication: {secretRefs: [{name: app}]}"), WantError: []string{"spec.cidrs", "Required value"}},
		{Desc: "prefix length 33", Object: trustedNetwork("cidrs: [10.0.0.0/33]"), WantError: []string{"spec.cidrs[0]", "must be a network in CIDR notation"}},
		{Desc: "address without prefix length", Object: trustedNetwork("cidrs: [10.0.0.1]"), WantError: []string{"spec.cidrs[0]", "must be a network in CIDR notation"}},
		{Desc: "host bits set", Object: trustedNetwork("cidrs: [10.1.2.3/16]"), WantError: []string{"spec.cidrs[0]", "must be written as its network address", "10.1.0.0/16 rather than 10.1.2.3/16"}},
		{Desc: "IPv6 host bits set", Object: trustedNetwork("cidrs: ['2001:db8:1:2::1/48']"), WantError: []string{"spec.cidrs[0]", "must be written as its network address", "2001:db8:1::/48 rather than 2001:db8:1:2::1/48"}},
		{Desc: "IPv4-mapped IPv6 network", Object: trustedNetwork("cidrs: ['::ffff:0.0.0.0/96']"), WantError: []string{"spec.cidrs[0]", "IPv4-mapped IPv6 networks", "write the IPv4 network"}, ForbidError: []string{"CIDR notation"}},
		{Desc: "IPv4-mapped IPv6 network in hexadecimal", Object: trustedNetwork("cidrs: ['0:0:0:0:0:ffff:a00:0/104']"), WantError: []string{"spec.cidrs[0]", "IPv4-mapped IPv6 networks"}, ForbidError: []string{"CIDR notation"}},
		{Desc: "IPv6 network ending in ffff groups", Object: trustedNetwork("cidrs: ['::ffff:0/112']")},
		{Desc: "AUTH Secret name with underscore", Object: trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {secretRefs: [{name: App_User}]}"), WantError: []string{"spec.authentication.secretRefs[0].name", "must be an object name"}},
		{Desc: "duplicate network", Object: trustedNetwork("cidrs: [10.0.0.0/8, 10.0.0.0/8]"), WantError: []string{"spec.cidrs[1]", "Duplicate value"}},
		{Desc: "65 networks", Object: trustedNetwork("cidrs:\n" + sixtyFiveCIDRs.String()), WantError: []string{"spec.cidrs", "must have at most 64 items"}},
		{Desc: "AUTH without Secrets", Object: trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {secretRefs: []}"), WantError: []string{"spec.authentication.secretRefs", "should have at least 1 items"}},
		{Desc: "17 credential Secrets", Object: trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication:\n secretRefs:\n" + seventeenRefs.String()), WantError: []string{"spec.authentication.secretRefs", "must have at most 16 items"}},
		{Desc: "unknown AUTH mode", Object: trustedNetwork("cidrs: [10.0.0.0/8]\nauthentication: {mode: Sometimes, secretRefs: [{name: app}]}"), WantError: []string{"spec.authentication.mode", `supported values: "Required", "Optional"`}},
	}
}
