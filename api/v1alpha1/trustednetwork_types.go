package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TrustedNetworkSpec says which clients may submit mail, and for which
// senders: a TrustedNetwork admits envelope senders of the SenderDomains of
// its own namespace only.
type TrustedNetworkSpec struct {
	// cidrs are the client networks, IPv4 or IPv6, each written as its
	// network address.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	CIDRs []CIDR `json:"cidrs"`

	// authentication adds SMTP AUTH (RFC 4954) to the network check. A client
	// always needs an address in cidrs; with mode Required it also needs
	// valid credentials. AUTH is offered only after STARTTLS.
	// +optional
	Authentication *SMTPAuthentication `json:"authentication,omitempty"`
}

// SMTPAuthMode says whether clients of a TrustedNetwork must authenticate.
// +kubebuilder:validation:Enum=Required;Optional
type SMTPAuthMode string

const (
	// SMTPAuthRequired: a client must authenticate before MAIL FROM.
	SMTPAuthRequired SMTPAuthMode = "Required"
	// SMTPAuthOptional: a client may authenticate; its identity is then
	// recorded, and bad credentials are refused.
	SMTPAuthOptional SMTPAuthMode = "Optional"
)

// SMTPAuthentication lists the credentials a TrustedNetwork accepts.
type SMTPAuthentication struct {
	// mode is Required (default) or Optional.
	// +optional
	// +kubebuilder:default=Required
	Mode SMTPAuthMode `json:"mode,omitempty"`

	// secretRefs name Secrets of type kubernetes.io/basic-auth in this
	// namespace, one user each. The client's identity is
	// <namespace>/<username>.
	// +required
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	SecretRefs []LocalObjectReference `json:"secretRefs"`
}

// TrustedNetworkStatus is the observed state of a TrustedNetwork.
type TrustedNetworkStatus struct {
	// observedGeneration is the generation of the spec that the whole status
	// was computed for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Accepted, ResolvedRefs, Programmed and Ready are always
	// present; Stalled and Reconciling only while true.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=16
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// TrustedNetwork admits SMTP clients to the relay.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=tn,categories=postgate
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="CIDRs",type=string,JSONPath=`.spec.cidrs`
// +kubebuilder:printcolumn:name="Auth",type=string,JSONPath=`.spec.authentication.mode`
// +kubebuilder:printcolumn:name="Reason",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Message",type=string,priority=1,JSONPath=`.status.conditions[?(@.type=="Ready")].message`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type TrustedNetwork struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired state.
	// +required
	Spec TrustedNetworkSpec `json:"spec"`

	// status is the observed state, written by the operator.
	// +optional
	Status TrustedNetworkStatus `json:"status,omitempty"`
}

// TrustedNetworkList is a list of TrustedNetworks.
//
// +kubebuilder:object:root=true
type TrustedNetworkList struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []TrustedNetwork `json:"items"`
}
