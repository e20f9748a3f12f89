// Package testenv holds the loopback fixtures that unit, integration and
// end-to-end tests share (docs/design.md contract 8): a real kube-apiserver and
// etcd (StartAPIServer), a DNS server with an editable zone and fault
// injection (StartDNSServer), SMTP sinks that record transactions and fail
// on command (StartSMTPSink), throwaway TLS certificates (NewCA), an
// MTA-STS policy host (StartPolicyServer), and a reader of the delivery
// status notifications the relay sends (ParseDSN).
//
// Every server binds an explicit 127.0.0.x address, given by the caller or
// DefaultAddr, and refuses any other; every server stops when its test ends
// (or its context does), and every wait is bounded. The package keeps no
// state of its own: each fixture is a value owned by one test.
package testenv
