// Package testenv holds the loopback fixtures that unit, integration and
// end-to-end tests share (DESIGN.md contract 8): a real kube-apiserver and
// etcd, and later a DNS server, SMTP sinks with fault injection and TLS
// certificates. Every server binds an explicit 127.0.0.x address.
package testenv
