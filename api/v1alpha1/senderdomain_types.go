package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SenderDomainSpec declares a domain the relay may send mail from.
// +kubebuilder:validation:XValidation:rule="!has(self.signing) || size(self.signing.selector) + size(self.domain) <= 241",fieldPath=".signing.selector",message="is too long for this domain: the DKIM record name <selector>._domainkey.<domain> must be at most 253 characters"
type SenderDomainSpec struct {
	// domain is the domain of the envelope senders (MAIL FROM) this object
	// covers, such as example.com. Subdomains are separate SenderDomains.
	// When two SenderDomains claim the same domain, the older one is accepted
	// and the other is Accepted=False with reason Conflicted.
	// +required
	Domain DomainName `json:"domain"`

	// signing enables DKIM signing (RFC 6376) of this domain's mail. Signed
	// mail goes to the recipients' MX hosts: a domain is either signed or
	// relayed through a RelayRoute, never both.
	// +optional
	Signing *DKIMSigning `json:"signing,omitempty"`

	// sourceIP is the dedicated local address the relay binds to when it
	// delivers this domain's mail, so that a target relay can authenticate us
	// by source address. The relay's host must own the address; it cannot be
	// unspecified (0.0.0.0, ::), multicast (224.0.0.0/4, ff00::/8), broadcast
	// or reserved (240.0.0.0/4), nor in 0.0.0.0/8 .
	// +optional
	// +kubebuilder:validation:XValidation:rule="!isIP(self) || !(ip(self).isUnspecified() || ['0.0.0.0/8', '224.0.0.0/4', '240.0.0.0/4', 'ff00::/8'].exists(c, cidr(c).containsIP(self)))",message="must be an address mail can be sent from: not unspecified (0.0.0.0, ::), multicast (224.0.0.0/4, ff00::/8), broadcast or reserved (240.0.0.0/4), nor in 0.0.0.0/8"
	SourceIP IPAddress `json:"sourceIP,omitempty"`

	// delivery sets how this domain's mail is delivered.
	// +optional
	Delivery *DeliveryPolicy `json:"delivery,omitempty"`
}

// DKIMAlgorithm is a DKIM signing algorithm and key size.
// +kubebuilder:validation:Enum=RSA2048;Ed25519
type DKIMAlgorithm string

const (
	// DKIMAlgorithmRSA2048 signs with rsa-sha256 and a 2048-bit key
	// (RFC 6376 section 3.3, RFC 8301).
	DKIMAlgorithmRSA2048 DKIMAlgorithm = "RSA2048"
	// DKIMAlgorithmEd25519 signs with ed25519-sha256 (RFC 8463).
	DKIMAlgorithmEd25519 DKIMAlgorithm = "Ed25519"
)

// DKIMSigning configures DKIM signing for a SenderDomain. The key comes either
// from a Secret the user manages (keySecretRef) or from one the operator
// generates (generate).
// +kubebuilder:validation:XValidation:rule="has(self.keySecretRef) != has(self.generate)",message="exactly one of keySecretRef and generate must be set"
type DKIMSigning struct {
	// selector is the DKIM selector (RFC 6376 section 3.1), one or more DNS
	// labels such as s2024 or eu.s2024: the public key is published as a TXT
	// record at <selector>._domainkey.<domain>, which must fit in 253
	// characters.
	// +required
	Selector DKIMSelector `json:"selector"`

	// algorithm of the key. A key from keySecretRef must match it.
	// +optional
	// +kubebuilder:default=RSA2048
	Algorithm DKIMAlgorithm `json:"algorithm,omitempty"`

	// keySecretRef names the Secret, in this namespace, that holds the
	// private key as PEM (PKCS#1 or PKCS#8). The key defaults to
	// "private.key".
	// +optional
	KeySecretRef *SecretKeyReference `json:"keySecretRef,omitempty"`

	// generate asks the operator to generate the key into a Secret in this
	// namespace. The Secret outlives the SenderDomain, so that deleting and
	// re-creating it keeps the published DNS record valid.
	// +optional
	Generate *DKIMKeyGeneration `json:"generate,omitempty"`
}

// DKIMKeyGeneration says where the operator keeps a generated DKIM key.
type DKIMKeyGeneration struct {
	// secretName is the name of the Secret the operator creates. Defaults to
	// postgate-dkim-<selector>.<domain>; when that is longer than the 253
	// characters of a Secret name, it is cut and ends with '-' and 10
	// hexadecimal digits of its SHA-256, so that every domain and selector
	// has its own Secret.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')",message="must be a valid Secret name (lowercase RFC 1123 subdomain)"
	SecretName string `json:"secretName,omitempty"`
}

// DeliveryPolicy sets how a SenderDomain's mail is delivered.
type DeliveryPolicy struct {
	// maxQueueLifetime is how long a message is retried before it bounces
	// as expired, from 1m to 120h. Defaults to 48h.
	// +optional
	// +kubebuilder:default="48h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9]+([.][0-9]+)?(ns|us|ms|s|m|h))+$') && !self.matches('(^|[hms])0*([1-9][0-9]{3,}([.][0-9]+)?h|[1-9][0-9]{4,}([.][0-9]+)?m([0-9]|$)|[1-9][0-9]{6,}([.][0-9]+)?s|[1-9][0-9]{9,}([.][0-9]+)?ms|[1-9][0-9]{12,}([.][0-9]+)?us|[1-9][0-9]{15,}([.][0-9]+)?ns)') && duration(self) >= duration('1m') && duration(self) <= duration('120h')",message="must be a duration from 1m to 120h, such as 48h"
	MaxQueueLifetime *metav1.Duration `json:"maxQueueLifetime,omitempty"`

	// tlsPolicy for delivery to the recipients' MX hosts. Defaults to
	// Opportunistic. It is the floor: a recipient domain's DANE (RFC 7672)
	// or MTA-STS (RFC 8461) policy raises it for that domain, never lowers
	// it. None is an explicit opt-out of TLS, DANE and MTA-STS included:
	// mail then travels in plaintext even to domains that ask for TLS. A
	// RelayRoute sets its own policy for its target.
	// +optional
	// +kubebuilder:default=Opportunistic
	TLSPolicy TLSPolicy `json:"tlsPolicy,omitempty"`

	// webhook receives a signed JSON notification for each message outcome
	// (delivered, deferred, bounced, expired).
	// +optional
	Webhook *NotificationWebhook `json:"webhook,omitempty"`
}

// NotificationWebhook is an HTTPS endpoint for delivery notifications. Each
// request carries an HMAC-SHA256 signature of its body made with the key from
// the Secret.
type NotificationWebhook struct {
	// url of the endpoint. It must use https; http is accepted only for a
	// loopback host (localhost, 127.0.0.0/8, ::1), for tests. The host is a
	// DNS name or an IP address, the port from 1 to 65535; credentials
	// (user:password@) are not accepted, since the HMAC signature
	// authenticates the requests, and neither are spaces or control
	// characters (percent-encode them).
	// +required
	// +kubebuilder:validation:MinLength=8
	// +kubebuilder:validation:MaxLength=1024
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[A-Za-z][-+.A-Za-z0-9]*://[^/?#]*@')",message="must not contain credentials (user:password@): the HMAC signature authenticates the requests"
	// +kubebuilder:validation:XValidation:rule="!self.matches('[[:space:][:cntrl:]]')",message="must not contain spaces or control characters: percent-encode them (a space is %20)"
	// +kubebuilder:validation:XValidation:rule="self.matches('^[A-Za-z][-+.A-Za-z0-9]*://[^/?#]*@') || self.matches('[[:space:][:cntrl:]]') || (self.matches('^https?://[^/?#@]+([/?#].*)?$') && isURL(self))",message="must be an absolute URL such as https://hooks.example.com/postgate"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^https?://[^/?#@]+([/?#].*)?$') || self.matches('^https?://([[][0-9A-Fa-f:.]+[]]|((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])|([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?[.])*[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?[.]?)(:[0-9]*)?([/?#].*)?$')",message="must have a host that is a DNS name or an IP address (IPv6 in brackets), such as hooks.example.com"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^https?://[^/?#]*:[0-9]*([/?#].*)?$') || self.matches('^https?://[^/?#]*:0*(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})([/?#].*)?$')",message="must have a port from 1 to 65535"
	// +kubebuilder:validation:XValidation:rule="self.startsWith('https://') || self.matches('^http://(localhost|127[.][0-9]{1,3}[.][0-9]{1,3}[.][0-9]{1,3}|\\\\[::1\\\\])(:[0-9]{1,5})?([/?#].*)?$')",message="must use https; http is allowed only for a loopback host"
	URL string `json:"url"`

	// hmacSecretRef names the Secret, in this namespace, with the HMAC key.
	// The key defaults to "key".
	// +required
	HMACSecretRef SecretKeyReference `json:"hmacSecretRef"`
}

// SenderDomainStatus is the observed state of a SenderDomain.
type SenderDomainStatus struct {
	// observedGeneration is the generation of the spec that the whole status
	// was computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Accepted, ResolvedRefs, Programmed and Ready are always
	// present; Stalled, Reconciling, RouteRefused and DeliveryDegraded only
	// while true.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// dkim is the DNS record to publish for the signing key.
	// +optional
	DKIM *DKIMRecord `json:"dkim,omitempty"`

	// delivery is reported by the relay replicas for this domain's mail that
	// goes to MX hosts.
	// +optional
	Delivery *DeliveryStatus `json:"delivery,omitempty"`
}

// DKIMRecord is the DNS TXT record that publishes a DKIM public key
// (RFC 6376 section 3.6.1).
type DKIMRecord struct {
	// name of the TXT record, <selector>._domainkey.<domain>.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name,omitempty"`

	// value of the TXT record, such as "v=DKIM1; k=ed25519; p=...".
	// +optional
	// +kubebuilder:validation:MaxLength=2048
	Value string `json:"value,omitempty"`

	// secretName is the Secret that holds the private key.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName,omitempty"`
}

// SenderDomain is a domain the relay may send mail from, owned by the
// namespace that declares it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=sd,categories=postgate
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Domain",type=string,JSONPath=`.spec.domain`
// +kubebuilder:printcolumn:name="Reason",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Message",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].message`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SenderDomain struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +required
	Spec SenderDomainSpec `json:"spec"`

	// status is the observed state, written by the operator (conditions)
	// and the relays (delivery).
	// +optional
	Status SenderDomainStatus `json:"status,omitempty"`
}

// SenderDomainList is a list of SenderDomains.
//
// +kubebuilder:object:root=true
type SenderDomainList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SenderDomain `json:"items"`
}
