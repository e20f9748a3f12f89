// Package controllers holds the operator: it reconciles SenderDomains,
// RelayRoutes and TrustedNetworks and the Secrets they reference, publishes
// the routing table in the relay namespace (docs/design.md contract 1), sets
// Programmed from the relays' Leases (contract 2), derives the delivery
// condition from the relays' entries and prunes those of dead relays
// (contract 6), and applies the guardrail policy (contract 7).
//
// The compile is global (conflicts and signing exclusivity are decided
// across objects), so there is one reconcile of one key for the whole table;
// every watched event requeues it, and the workqueue coalesces bursts. A
// reconcile recompiles only when an input changed (a new generation, a
// referenced Secret, the policy), publishes only when the table's hash
// changed, and writes the status of only the objects whose status changed.
package controllers
