// Package routing owns the compiler and the routing table.
//
// Compile is one pure function from resources (SenderDomains, RelayRoutes,
// TrustedNetworks, the Secrets they reference, the guardrail policy) to a
// Table plus a Verdict for every object. The operator, the standalone relay
// and `postgate check` all call it, so what check prints is what the cluster
// does. The Table answers the relay's questions (may this client send as this
// sender; where and how does this message go) and is immutable, so a relay
// swaps a whole new one in atomically. Encode and Decode turn a Table into
// content-addressed shards and an index (docs/design.md contract 1) and back.
package routing
