// Package controllers holds the operator's reconcilers: one per kind, the
// publication of the routing table in the relay namespace, the Programmed
// condition, and the delivery condition derived from the relays' reports.
package controllers
