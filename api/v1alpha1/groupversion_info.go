// Package v1alpha1 holds the postgate.io/v1alpha1 API: SenderDomain,
// RelayRoute and TrustedNetwork, their validation, and the condition types and
// reasons their status carries. It imports only apimachinery, so that any
// client can use it cheaply. The apply configurations for server-side apply
// (docs/design.md section 4) are generated into the package
// applyconfiguration/api/v1alpha1 below this one, which also needs
// client-go.
//
// +kubebuilder:object:generate=true
// +kubebuilder:ac:generate=true
// +groupName=postgate.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is the group and version of every kind in this package.
var GroupVersion = schema.GroupVersion{Group: "postgate.io", Version: "v1alpha1"}

// SchemeGroupVersion is GroupVersion under the name that generated code (the
// apply configurations' ForKind) refers to.
var SchemeGroupVersion = GroupVersion

// AddToScheme adds the kinds of this package to a runtime.Scheme.
func AddToScheme(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&SenderDomain{}, &SenderDomainList{},
		&RelayRoute{}, &RelayRouteList{},
		&TrustedNetwork{}, &TrustedNetworkList{},
	)
	metav1.AddToGroupVersion(s, GroupVersion)
	return nil
}
