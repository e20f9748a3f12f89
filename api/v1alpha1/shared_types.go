package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DomainName is a lowercase fully-qualified domain name: RFC 1123 labels of
// letters, digits and hyphens, at least two labels, at most 253 characters, no
// trailing dot. The last label must start with a letter, which rules out IP
// address literals (no top-level domain is numeric, RFC 3696 section 2).
// +kubebuilder:validation:MinLength=3
// +kubebuilder:validation:MaxLength=253
// +kubebuilder:validation:XValidation:rule="self.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')",message="must be a lowercase fully-qualified domain name (RFC 1123 labels of a-z, 0-9 and '-', at least two labels, no IP address, no trailing dot)"
type DomainName string

// DKIMSelector is a DKIM selector (RFC 6376 section 3.1): one or more
// lowercase DNS labels separated by dots, such as s2024 or eu.s2024.
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=238
// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$')",message="must be a DKIM selector: DNS labels of lowercase letters, digits and '-', separated by dots, such as s2024 or eu.s2024"
type DKIMSelector string

// EmailAddress is an RFC 5321 mailbox (section 4.1.2) in its common form:
// a dot-atom local part of at most 64 characters (RFC 5322 section 3.2.3:
// letters, digits and !#$%&'*+-/=?^_`{|}~, so o'brien@example.com is one),
// '@', and a fully-qualified domain. Quoted local parts, address literals
// and non-ASCII (RFC 6531) addresses are not accepted.
// +kubebuilder:validation:MinLength=6
// +kubebuilder:validation:MaxLength=254
// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z0-9!#$%&\\'*+/=?^_`{|}~-]+([.][A-Za-z0-9!#$%&\\'*+/=?^_`{|}~-]+)*@([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?[.])+[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$') && self.indexOf('@') <= 64",message="must be an email address (addr-spec) such as billing@example.com, with a dot-atom local part of at most 64 characters (letters, digits and !#$%&'*+-/=?^_`{|}~) and a fully-qualified domain"
type EmailAddress string

// IPAddress is a single IPv4 or IPv6 address, without a prefix length.
// +kubebuilder:validation:MinLength=2
// +kubebuilder:validation:MaxLength=45
// +kubebuilder:validation:XValidation:rule="isIP(self)",message="must be a single IPv4 or IPv6 address without a prefix length, such as 192.0.2.10 or 2001:db8::10"
type IPAddress string

// CIDR is an IPv4 or IPv6 network in CIDR notation, written as its network
// address (host bits zero), such as 10.0.0.0/8 or 2001:db8::/32. IPv4-mapped
// IPv6 networks (::ffff:0:0/96) are not accepted: the IPv4 network is
// written as such.
// +kubebuilder:validation:MinLength=4
// +kubebuilder:validation:MaxLength=49
// +kubebuilder:validation:XValidation:rule="isCIDR(self) || self.matches('(?i)^[0:]*:ffff:([0-9]{1,3}([.][0-9]{1,3}){3}|[0-9a-f]{1,4}:[0-9a-f]{1,4})/[0-9]+$')",message="must be a network in CIDR notation, such as 10.0.0.0/8 or 2001:db8::/32"
// +kubebuilder:validation:XValidation:rule="isCIDR(self) || !self.matches('(?i)^[0:]*:ffff:([0-9]{1,3}([.][0-9]{1,3}){3}|[0-9a-f]{1,4}:[0-9a-f]{1,4})/[0-9]+$')",message="IPv4-mapped IPv6 networks (::ffff:0:0/96) are not allowed: write the IPv4 network, such as 10.0.0.0/8"
// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self) == cidr(self).masked()",message="must be written as its network address with the host bits zero, such as 10.0.0.0/8 rather than 10.1.2.3/8",messageExpression="'must be written as its network address with the host bits zero: %s rather than %s'.format([string(cidr(self).masked()), self])"
type CIDR string

// TLSPolicy says how much TLS a delivery insists on.
// +kubebuilder:validation:Enum=None;Opportunistic;Required;Verify
type TLSPolicy string

const (
	// TLSPolicyNone never negotiates TLS.
	TLSPolicyNone TLSPolicy = "None"
	// TLSPolicyOpportunistic uses TLS when the peer offers it, without
	// verifying the certificate, and falls back to plaintext otherwise
	// (RFC 3207 as deployed on the public MX network).
	TLSPolicyOpportunistic TLSPolicy = "Opportunistic"
	// TLSPolicyRequired defers the message when TLS cannot be negotiated; the
	// certificate is not verified.
	TLSPolicyRequired TLSPolicy = "Required"
	// TLSPolicyVerify requires TLS and a certificate valid for the target host
	// name, checked against the system roots or the route's CA bundle.
	TLSPolicyVerify TLSPolicy = "Verify"
)

// TLSMode says how TLS starts on a connection.
// +kubebuilder:validation:Enum=STARTTLS;Implicit
type TLSMode string

const (
	// TLSModeSTARTTLS upgrades a plaintext session with STARTTLS (RFC 3207).
	TLSModeSTARTTLS TLSMode = "STARTTLS"
	// TLSModeImplicit starts TLS before the SMTP greeting, as on port 465
	// (RFC 8314 section 3.3).
	TLSModeImplicit TLSMode = "Implicit"
)

// LocalObjectReference names an object in the same namespace.
// +structType=atomic
type LocalObjectReference struct {
	// name of the referent, in the namespace of the referring object: an
	// object name (lowercase RFC 1123 subdomain).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="must be an object name: a lowercase RFC 1123 subdomain of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
	Name string `json:"name"`
}

// SecretKeyReference names one key of a Secret in the same namespace.
// +structType=atomic
type SecretKeyReference struct {
	// name of the Secret, in the namespace of the referring object: an
	// object name (lowercase RFC 1123 subdomain).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="must be an object name: a lowercase RFC 1123 subdomain of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
	Name string `json:"name"`

	// key in the Secret's data. Each field that holds a SecretKeyReference
	// documents its default.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-._a-zA-Z0-9]+$')",message="must be a Secret data key: letters, digits, '-', '_' and '.'"
	Key string `json:"key,omitempty"`
}

// DeliveryStatus is what the relay replicas report about delivering this
// object's mail (docs/design.md contract 6). Each replica writes only its own entry,
// with server-side apply under the field manager postgate-relay/<replica>; the
// operator prunes the entries of replicas that are gone.
type DeliveryStatus struct {
	// replicas holds one entry per relay replica that has delivered or tried
	// to deliver this object's mail.
	// +optional
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MaxItems=64
	Replicas []ReplicaDeliveryStatus `json:"replicas,omitempty"`
}

// ReplicaDeliveryStatus is one relay replica's view of delivery.
type ReplicaDeliveryStatus struct {
	// name of the relay replica (its pod name).
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// updateTime is when the replica last wrote this entry.
	// +optional
	UpdateTime *metav1.Time `json:"updateTime,omitempty"`

	// lastDelivered is the most recent attempt that the next hop accepted.
	// For routed mail this is the final tracking point: the target relay has
	// taken responsibility for the message.
	// +optional
	LastDelivered *DeliveryAttempt `json:"lastDelivered,omitempty"`

	// lastFailed is the most recent attempt that failed, temporarily or
	// permanently.
	// +optional
	LastFailed *DeliveryAttempt `json:"lastFailed,omitempty"`

	// window counts outcomes over a recent period.
	// +optional
	Window *DeliveryWindow `json:"window,omitempty"`
}

// DeliveryAttempt describes one delivery attempt to a next hop.
type DeliveryAttempt struct {
	// time the attempt ended, with microseconds (RFC 3339), so that a
	// success and a failure within one second are ordered.
	// +required
	Time metav1.MicroTime `json:"time"`

	// relayHost is the host name of the next hop (MX host or target relay).
	// +optional
	// +kubebuilder:validation:MaxLength=253
	RelayHost string `json:"relayHost,omitempty"`

	// relayAddress is the IP address and port that was connected to.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	RelayAddress string `json:"relayAddress,omitempty"`

	// sourceAddress is the local address the connection was made from.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	SourceAddress string `json:"sourceAddress,omitempty"`

	// responseCode is the SMTP reply code (RFC 5321 section 4.2), or 0 when
	// no reply was received (connection or DNS failure).
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=599
	ResponseCode int32 `json:"responseCode,omitempty"`

	// enhancedCode is the enhanced status code (RFC 3463), such as 5.1.1.
	// +optional
	// +kubebuilder:validation:MaxLength=16
	EnhancedCode string `json:"enhancedCode,omitempty"`

	// reply is the reply text, or the local error, truncated to 512 bytes.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Reply string `json:"reply,omitempty"`

	// tls describes the transport encryption of the attempt.
	// +optional
	TLS *TransportEncryption `json:"tls,omitempty"`

	// site is the traffic shaping site of the recipient domain's MX hosts
	// (their registrable domains, such as google.com or
	// example.net+example.org), when the relay shapes MX delivery.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Site string `json:"site,omitempty"`

	// throttledUntil is set when traffic shaping deferred the mail without
	// counting an attempt, because the site is suspended after a throttle
	// reply or one of its limits is reached: when it is due again. The
	// reply says which.
	// +optional
	ThrottledUntil *metav1.Time `json:"throttledUntil,omitempty"`
}

// TransportEncryption describes the TLS of one connection.
type TransportEncryption struct {
	// requested is the TLS policy that applied.
	// +optional
	Requested TLSPolicy `json:"requested,omitempty"`

	// established is true when TLS was negotiated.
	// +optional
	Established bool `json:"established,omitempty"`

	// protocol is the negotiated TLS version, such as TLSv1.3.
	// +optional
	// +kubebuilder:validation:MaxLength=32
	Protocol string `json:"protocol,omitempty"`

	// cipherSuite is the negotiated cipher suite (IANA name).
	// +optional
	// +kubebuilder:validation:MaxLength=128
	CipherSuite string `json:"cipherSuite,omitempty"`

	// policy is what decided the connection's TLS: dane (the MX host's
	// DNSSEC-signed TLSA records, RFC 7672), mta-sts (the recipient
	// domain's enforced MTA-STS policy, RFC 8461), mta-sts-testing (a
	// policy in testing mode: checked and reported, not enforced), or
	// tls-policy (the SenderDomain's mxTLSPolicy or the RelayRoute's
	// tlsPolicy alone).
	// +optional
	// +kubebuilder:validation:MaxLength=32
	Policy string `json:"policy,omitempty"`

	// policyResult is the RFC 8460 result type of a TLS check or
	// negotiation that failed (validation-failure,
	// certificate-host-mismatch, starttls-not-supported, ...), empty when
	// none failed.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	PolicyResult string `json:"policyResult,omitempty"`
}

// DeliveryWindow counts delivery outcomes over a recent period.
type DeliveryWindow struct {
	// seconds is the length of the window.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Seconds int64 `json:"seconds,omitempty"`

	// delivered counts recipients accepted by the next hop.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Delivered int64 `json:"delivered,omitempty"`

	// deferred counts temporary failures (the message stays queued).
	// +optional
	// +kubebuilder:validation:Minimum=0
	Deferred int64 `json:"deferred,omitempty"`

	// bounced counts permanent failures and expiries.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Bounced int64 `json:"bounced,omitempty"`
}
