package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RelayRouteSpec sends the mail of one SenderDomain to a target relay (smart
// host) instead of the recipients' MX hosts.
type RelayRouteSpec struct {
	// senderDomainRef names the SenderDomain, in this namespace, whose mail
	// this route carries. A sender domain has at most one target relay: when
	// two routes name the same domain, the older one is accepted. A route is
	// refused while the SenderDomain signs with DKIM.
	// +required
	SenderDomainRef LocalObjectReference `json:"senderDomainRef"`

	// target is the relay that receives the mail.
	// +required
	Target RelayTarget `json:"target"`

	// senderAddresses, when set, limits the route to these envelope senders;
	// other senders of the domain go to MX. When empty, every sender of the
	// domain is routed. Each address must be in the SenderDomain's domain.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=10
	SenderAddresses []EmailAddress `json:"senderAddresses,omitempty"`
}

// RelayTarget is a target relay and how to talk to it.
// +kubebuilder:validation:XValidation:rule="!has(self.credentialsSecretRef) || (has(self.tlsPolicy) && (self.tlsPolicy in ['Required', 'Verify'] || (self.tlsPolicy == 'Opportunistic' && has(self.tlsMode) && self.tlsMode == 'Implicit')))",message="credentialsSecretRef needs TLS: tlsPolicy Required or Verify, or tlsMode Implicit (where Opportunistic behaves as Required); credentials are never sent without TLS"
// +kubebuilder:validation:XValidation:rule="!has(self.caBundleSecretRef) || (has(self.tlsPolicy) && self.tlsPolicy == 'Verify')",message="caBundleSecretRef is used only with tlsPolicy Verify"
// +kubebuilder:validation:XValidation:rule="!has(self.tlsMode) || self.tlsMode != 'Implicit' || !has(self.tlsPolicy) || self.tlsPolicy != 'None'",message="tlsMode Implicit cannot be combined with tlsPolicy None"
type RelayTarget struct {
	// host is the target relay's fully-qualified host name; an IP address is
	// not accepted, so that TLS can verify the name.
	// +required
	Host DomainName `json:"host"`

	// port of the target relay. Defaults to 25.
	// +optional
	// +kubebuilder:default=25
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port,omitempty"`

	// tlsPolicy for connections to the target. Defaults to Opportunistic.
	// +optional
	// +kubebuilder:default=Opportunistic
	TLSPolicy TLSPolicy `json:"tlsPolicy,omitempty"`

	// tlsMode is how TLS starts: STARTTLS (default) or Implicit (port 465).
	// With Implicit, Opportunistic behaves as Required: a connection without
	// TLS is never used, so credentials may be sent with either.
	// +optional
	// +kubebuilder:default=STARTTLS
	TLSMode TLSMode `json:"tlsMode,omitempty"`

	// caBundleSecretRef names the Secret, in this namespace, with the PEM CA
	// certificates that verify the target (tlsPolicy Verify). Without it the
	// system roots are used. The key defaults to "ca.crt".
	// +optional
	CABundleSecretRef *SecretKeyReference `json:"caBundleSecretRef,omitempty"`

	// credentialsSecretRef names a Secret of type kubernetes.io/basic-auth,
	// in this namespace, whose username and password authenticate us to the
	// target with SMTP AUTH (PLAIN or LOGIN), only over TLS: it needs
	// tlsPolicy Required or Verify, or tlsMode Implicit.
	// +optional
	CredentialsSecretRef *LocalObjectReference `json:"credentialsSecretRef,omitempty"`
}

// RelayRouteStatus is the observed state of a RelayRoute.
type RelayRouteStatus struct {
	// observedGeneration is the generation of the spec that the whole status
	// was computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Accepted, ResolvedRefs, Programmed and Ready are always
	// present; Stalled, Reconciling and DeliveryDegraded only while true.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// delivery is reported by the relay replicas for mail sent to the target.
	// +optional
	Delivery *DeliveryStatus `json:"delivery,omitempty"`
}

// RelayRoute sends the mail of a SenderDomain to a target relay.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=rr,categories=postgate
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Sender Domain",type=string,JSONPath=`.spec.senderDomainRef.name`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.spec.target.host`
// +kubebuilder:printcolumn:name="Port",type=integer,JSONPath=`.spec.target.port`
// +kubebuilder:printcolumn:name="Reason",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Message",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].message`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RelayRoute struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +required
	Spec RelayRouteSpec `json:"spec"`

	// status is the observed state, written by the operator (conditions)
	// and the relays (delivery).
	// +optional
	Status RelayRouteStatus `json:"status,omitempty"`
}

// RelayRouteList is a list of RelayRoutes.
//
// +kubebuilder:object:root=true
type RelayRouteList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []RelayRoute `json:"items"`
}
