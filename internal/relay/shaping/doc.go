// Package shaping is the relay's traffic shaping toward the sites it
// delivers to (issue 20): which site a recipient domain belongs to, the
// per-site limits the platform team's policy sets, the admission of
// connections and messages against them, suspension on throttle replies,
// and a round-robin queue that shares a site's capacity between tenants.
// It decides and counts; it never blocks, sleeps or dials: delivery asks,
// and waits or defers as it sees fit. It imports no other postgate package.
//
// # Sites
//
// A site is the set of MX hosts a recipient domain resolves to, named by
// the hosts' registrable domains (SiteOf): every domain hosted at Google is
// the site google.com, at Microsoft 365 or Outlook.com outlook.com, at
// Yahoo or AOL yahoodns.net. Receivers count per sending IP across all the
// domains they host, so the relay limits per site, not per domain.
//
// # Policy
//
// A Policy is a default rule and a list of site rules, matched by site
// name or MX host suffix, first match wins; a rule's unset fields are the
// default's. Per site: maxConnections, maxMessagesPerConnection,
// maxMessagesPerMinute, maxMessagesPerHour, maxNewConnectionsPerMinute,
// throttleReplies (reply code, enhanced status code (RFC 3463), and a
// regular expression on the text; the default's apply to every site) and
// suspension (initial, max, resetAfter). Parse reads YAML or JSON
// strictly, as the guardrail policy (docs/design.md contract 7); every
// error names the rule and the field. DefaultPolicyYAML is the shipped
// policy, with the source of every number: KumoMTA's shipped and community
// shaping rules, and the providers' own pages (Gmail's SMTP error list and
// its 421 4.7.28, Outlook.com's policies and 451 4.7.650/4.7.651, Yahoo's
// 20 messages per connection and [TSS04], iCloud's postmaster page, GMX and
// Web.de's 421 texts).
//
// # Limits
//
// A Limiter holds each site's state. AcquireConn is asked before
// connecting, Conn.AcquireMessage before each MAIL FROM, Conn.Release when
// the connection closes; each answers with a Decision: go, or the Reason
// and when to ask again (Until, or Released for a freed connection).
//
//   - Rates are token buckets that hold "n per period" for every window of
//     one period, however a receiver places it: a burst of a tenth of n
//     (at least 1), refilled at n - burst + 1 per period (bucket.go).
//   - Limits are per replica: Scale(live replicas) divides every limit but
//     messages per connection, rounding down to at least 1, so adding
//     replicas does not multiply what a site receives (the fleet's total
//     stays within the limit while the limit is at least the replica
//     count).
//   - Observe(site, reply) recognizes a throttle reply and suspends the
//     site: initial, doubled for each suspension that begins within
//     resetAfter of the last one's end, up to max, and initial again after
//     resetAfter of quiet. Replies that arrive while suspended (the other
//     connections' answers to the same event) do not extend it. Any other
//     reply, a 4xx included, changes nothing: the message keeps its own
//     retry. Suspensions are per replica and not persisted: each replica
//     learns from its own replies.
//   - SetPolicy applies a new policy at once, keeping open connections,
//     bucket tokens and suspensions under way.
//
// Stats returns a snapshot per site (open and opened connections, messages
// granted, refusals by reason, deferrals without attempt, throttle replies,
// suspensions) for metrics and `postgate queue sites`.
//
// # Fairness
//
// FairQueue takes items round-robin between tenants: when a site is the
// bottleneck, one tenant's 10,000 queued messages and another's 10 take
// turns, and the 10 are through within 20 grants.
//
// SHAPING-SECTION.md (at the repository root, for docs/design.md) says how
// delivery uses this package.
package shaping
