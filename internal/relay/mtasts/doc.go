// Package mtasts finds the MTA-STS policy (RFC 8461) of a recipient domain
// for the relay's MX delivery: it discovers, fetches, parses, caches and
// persists policies, and says why a new one could not be had, with the
// result type TLS-RPT (RFC 8460) reports. Applying a policy to a
// connection (which MX hosts, which certificates) is delivery's; this
// package gives it Policy.Match and the mode.
//
// # Discovery (RFC 8461 section 3.1)
//
// Lookup asks the injected resolver for the TXT records of
// _mta-sts.<domain>, joins each record's strings, and discards those that
// do not start with "v=STSv1" and ";". Exactly one must remain, with
// exactly one id of 1 to 32 letters and digits; extension fields are
// checked for syntax and ignored. None, several or an invalid one: the
// domain has no live record.
//
// # Fetching (section 3.3)
//
// A new id, or no unexpired policy cached, fetches
// https://mta-sts.<domain>/.well-known/mta-sts.txt: the address from the
// injected resolver (the relay's own, not the system's), a certificate
// PKIX-valid for mta-sts.<domain> (RootCAs, the system roots by default),
// HTTP 200 only (a redirect is refused, never followed), media type
// text/plain, at most MaxBody bytes (64 KiB), all within Timeout (30 s)
// connecting included; no proxy, no HTTP cache. Concurrent Lookups of one
// domain and id wait on one fetch, which runs on the cache's context, so
// its result is cached even when every caller gave up. A failed fetch of
// an id is not tried again for RetryAfter (5 minutes, section 3.3's
// suggestion); a new id is fetched at once. Failures are logged at warning
// level (section 3.3: "alert administrators"), unless the cached policy is
// of mode none.
//
// # Parsing (section 3.2)
//
// ParsePolicy is strict: "key: value" lines ended by CRLF or LF, the
// first "version: STSv1"; mode enforce, testing or none; max_age 0 to
// 31557600 seconds (at most 10 digits); one or more mx ("*." and a domain,
// or a host name, RFC 5321 syntax, no final dot) unless the mode is none;
// version, mode and max_age once each; unknown keys ignored once their line
// is well formed. Blank lines at the end are tolerated, not between fields.
// Errors name the line.
//
// # Which policy applies (sections 3.3, 5 and 5.1)
//
//   - a cached unexpired policy whose id the TXT record still shows applies
//     without a fetch;
//   - a new policy replaces the cached one; a policy of mode none replaces
//     it too, and Lookup then returns no policy (section 5, section 8.3);
//   - when the TXT lookup fails, the record is gone or invalid, or the fetch
//     fails, an unexpired cached policy keeps applying (section 5.1: the
//     absence of a record does not remove a cached policy); with none
//     cached, no policy applies and delivery goes on as without MTA-STS;
//   - a policy expires max_age after its fetch (section 3.2), whatever the
//     TXT record says, and is dropped then;
//   - once a cached policy is older than RefreshAfter (24 h) or half its
//     max_age, a Lookup that uses it also fetches it again in the
//     background (section 3.3: "proactively refresh"; section 10.2), so an
//     attacker who later blocks discovery meets a policy with most of its
//     max_age ahead.
//
// Result.Err carries the RFC 8460 result type of a failed fetch or parse:
// sts-policy-fetch-error (address, connection, status, redirect, size,
// time), sts-webpki-invalid (the certificate), sts-policy-invalid (syntax,
// media type), with or without a cached policy in Result.Policy.
//
// # Persistence
//
// With Dir set, each domain's policy is a file <domain>.json holding the
// policy text as fetched, its id and fetch time; written to a temporary
// file, fsynced, renamed, and the directory fsynced, so a crash leaves the
// old policy or the new one. New reads them back (parsing the text again),
// skips and logs a corrupt file, removes expired policies and leftover
// temporary files. A restart therefore fetches nothing it had (section
// 10.2: a relay that forgot its policies would be open to an attacker who
// blocks discovery). MaxEntries (10000) bounds the domains kept; when full,
// the policy that expires first makes room.
package mtasts
