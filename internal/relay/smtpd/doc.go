// Package smtpd is the relay's SMTP server: a go-smtp backend that admits
// clients by the routing table's TrustedNetworks and SMTP AUTH, refuses
// unsafe addresses and message bytes, enforces size, recipient and
// connection limits, and hands accepted messages to the durable spool,
// answering 250 only once the spool has them on disk.
//
// In front of go-smtp sits an accept path of its own: PROXY protocol
// (github.com/pires/go-proxyproto) from trusted load balancers only,
// connection limits per client address and in total, and an idle deadline
// that is extended on every read, so a large message sent slowly but
// steadily is not cut off while an idle client is (go-smtp's own read
// deadline is set once per command line and would cover a whole DATA body).
//
// Between that accept path and go-smtp sits protoConn, which does TLS
// (implicit and STARTTLS) itself so that it sees the plain-text stream
// before go-smtp parses it: it refuses what go-smtp's DATA reader would
// silently change, and corrects go-smtp's reply codes where RFC 5321 and
// RFC 4954 ask for others (see protoConn).
//
// The routing table is read through TableSource at every decision, so a
// table swapped in during a session applies to the next command without
// dropping the connection.
package smtpd
