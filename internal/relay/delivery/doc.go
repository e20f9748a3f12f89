// Package delivery is the relay's outbound side: it takes due messages
// from the queue, routes each by the routing table in force at that
// attempt (docs/design.md contract 5), and delivers them by SMTP to the sender
// domain's target relay or to the recipient domains' MX hosts.
//
// # Decisions, per attempt
//
// A Worker leases a due message and looks its sender up in the current
// table (TableSource). A routed sender's due recipients all go to the
// route's target relay in one transaction; otherwise they are grouped by
// recipient domain, one transaction per domain, to its MX hosts (RFC 5321
// section 5.1: preference order, random among equals, the domain itself
// when it has no MX, CNAMEs followed, a null MX (RFC 7505) final). A
// sender whose domain left the table goes to MX with the defaults
// (Opportunistic TLS, 48h). Recipients are sent exactly as the client gave
// them; nothing in the envelope or the message is rewritten.
//
// # Connections
//
// Each connection binds the domain's source IP when it has one, applies
// the TLS policy (None, Opportunistic, Required, Verify) in STARTTLS or
// implicit mode, authenticates to a target relay with PLAIN or LOGIN over
// TLS only, and says EHLO with the relay's host name. Up to MaxAddresses
// addresses are tried before an attempt defers. An idle session is kept
// for IdleTimeout and reused, after RSET, for the next message to the
// same address; concurrency is bounded per destination and in total.
// go-smtp's client sets a session up (EHLO, AUTH); the transactions are
// the package's own (pipeline.go): to a server that offers PIPELINING (RFC
// 2920), RSET, MAIL, every RCPT and DATA go in one group, and the message
// is dot-stuffed a buffer at a time.
// Opportunistic TLS whose handshake fails is retried once, on a new
// connection, in plaintext.
//
// # Outcomes
//
// Per recipient: 2xx is delivered; 5xx (and NXDOMAIN, null MX) fails at
// once; everything else (4xx, 421, connection, DNS, TLS policy, source IP,
// AUTH) is deferred, and the queue spaces the retries (queue.Retry) until
// the lifetime of the sender's domain is over, counted from arrival, then
// expires the recipient. Failed and expired recipients are reported to the
// Bouncer before the queue records them, never for the null sender. Each
// attempt to each destination is one Attempt for the Observer and one log
// line per recipient.
//
// A Worker keeps no state between attempts but its DNS cache and idle
// connections: the queue holds the schedule, so a restart resumes it.
package delivery
