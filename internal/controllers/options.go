package controllers

import (
	"time"
)

// Options configure the operator's reconciler.
type Options struct {
	// RelayNamespace is where the table is published and the relays keep
	// their Leases.
	RelayNamespace string
	// PolicyNamespace and PolicyName name the guardrail ConfigMap (docs/design.md
	// contract 7); an empty PolicyName, or no such ConfigMap, means the
	// default policy.
	PolicyNamespace, PolicyName string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// DeliveryWindow is how long a failed delivery attempt keeps an object
	// DeliveryDegraded unless a later attempt succeeds; default 15 minutes.
	DeliveryWindow time.Duration
	// StatusWorkers bounds the concurrent status writes; default 8.
	StatusWorkers int
	// AckWait is how long the status pass waits, after a publication with
	// live relays, for them to load the new version (their Lease updates
	// end the wait early), so that a changed object goes straight to
	// Programmed=True instead of being written twice; default 2 s, negative
	// to write at once.
	AckWait time.Duration
}
