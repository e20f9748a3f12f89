package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Object is one of the three kinds, seen through the status they share:
// the operator's conditions and observedGeneration, and the relays'
// delivery entries (nil on a TrustedNetwork, which carries no mail of its
// own) and DKIM record (only a SenderDomain's); and through the Secrets
// their specs name. Code that only reads or
// writes these need not tell the kinds apart.
// +kubebuilder:object:generate=false
type Object interface {
	metav1.Object
	runtime.Object
	GetConditions() []metav1.Condition
	SetConditions([]metav1.Condition)
	GetObservedGeneration() int64
	SetObservedGeneration(int64)
	GetDelivery() *DeliveryStatus
	GetDKIM() *DKIMRecord
	SecretNames() []string
}

var (
	_ Object = (*SenderDomain)(nil)
	_ Object = (*RelayRoute)(nil)
	_ Object = (*TrustedNetwork)(nil)
)

// GetConditions returns status.conditions.
func (o *SenderDomain) GetConditions() []metav1.Condition { return o.Status.Conditions }

// SetConditions sets status.conditions.
func (o *SenderDomain) SetConditions(c []metav1.Condition) { o.Status.Conditions = c }

// GetObservedGeneration returns status.observedGeneration.
func (o *SenderDomain) GetObservedGeneration() int64 { return o.Status.ObservedGeneration }

// SetObservedGeneration sets status.observedGeneration.
func (o *SenderDomain) SetObservedGeneration(g int64) { o.Status.ObservedGeneration = g }

// GetDelivery returns status.delivery.
func (o *SenderDomain) GetDelivery() *DeliveryStatus { return o.Status.Delivery }

// GetDKIM returns status.dkim.
func (o *SenderDomain) GetDKIM() *DKIMRecord { return o.Status.DKIM }

// GetConditions returns status.conditions.
func (o *RelayRoute) GetConditions() []metav1.Condition { return o.Status.Conditions }

// SetConditions sets status.conditions.
func (o *RelayRoute) SetConditions(c []metav1.Condition) { o.Status.Conditions = c }

// GetObservedGeneration returns status.observedGeneration.
func (o *RelayRoute) GetObservedGeneration() int64 { return o.Status.ObservedGeneration }

// SetObservedGeneration sets status.observedGeneration.
func (o *RelayRoute) SetObservedGeneration(g int64) { o.Status.ObservedGeneration = g }

// GetDelivery returns status.delivery.
func (o *RelayRoute) GetDelivery() *DeliveryStatus { return o.Status.Delivery }

// GetDKIM returns nil: a RelayRoute signs nothing of its own.
func (o *RelayRoute) GetDKIM() *DKIMRecord { return nil }

// GetConditions returns status.conditions.
func (o *TrustedNetwork) GetConditions() []metav1.Condition { return o.Status.Conditions }

// SetConditions sets status.conditions.
func (o *TrustedNetwork) SetConditions(c []metav1.Condition) { o.Status.Conditions = c }

// GetObservedGeneration returns status.observedGeneration.
func (o *TrustedNetwork) GetObservedGeneration() int64 { return o.Status.ObservedGeneration }

// SetObservedGeneration sets status.observedGeneration.
func (o *TrustedNetwork) SetObservedGeneration(g int64) { o.Status.ObservedGeneration = g }

// GetDelivery returns nil: a TrustedNetwork carries no delivery entries.
func (o *TrustedNetwork) GetDelivery() *DeliveryStatus { return nil }

// GetDKIM returns nil: a TrustedNetwork signs nothing of its own.
func (o *TrustedNetwork) GetDKIM() *DKIMRecord { return nil }

// NewObject returns an empty object of the named kind (SenderDomain,
// RelayRoute or TrustedNetwork), or nil for any other name.
func NewObject(kind string) Object {
	switch kind {
	case "SenderDomain":
		return &SenderDomain{}
	case "RelayRoute":
		return &RelayRoute{}
	case "TrustedNetwork":
		return &TrustedNetwork{}
	}
	return nil
}
