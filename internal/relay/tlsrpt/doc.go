// Package tlsrpt implements SMTP TLS Reporting (RFC 8460) for the relay's
// own deliveries: it counts the TLS outcome of every delivery session per
// policy domain and UTC day, keeps the counts on disk, and sends each policy
// domain the day's aggregate report at the addresses its _smtp._tls record
// names. It owns the counting, the report format and the sending; delivery
// decides the outcome of a session and calls Record.
//
// # Counting (RFC 8460 section 4)
//
// A Session is one delivery session towards a policy domain: the policy
// that applied (section 4.3 policy-type tlsa, sts or no-policy-found, with
// its policy-string and mx-host) and, when it failed, the section 4.3
// result-type and the failure-details fields. Record adds it to the counts
// of its policy domain and UTC day (section 4.1: a report covers a full day,
// 00:00 to 24:00 UTC), under one mutex, without I/O. Within a domain and day
// each distinct policy gets its own policies[] entry with its summary
// counts; each distinct failure (every failure-details field equal) gets
// one failure-details entry with its failed-session-count.
//
// The state is bounded: at most Options.MaxDomains policy domains a day,
// MaxPolicies policies a domain and MaxFailureDetails failure-details a
// policy (a failure past that bound still counts in the summary), strings
// cut to 256 bytes and 16 policy-string lines, MaxDayBytes of strings a
// day, and days older than KeepDays dropped. A
// session of a domain past the bound, of a day too far from today, or of a
// domain whose report has started going out is not counted (Dropped).
//
// # Persistence
//
// With Options.Dir, Run writes each day whose counts changed to
// <Dir>/<YYYY-MM-DD>.json every SaveInterval (a temporary file, fsync,
// rename, directory fsync), and once more when it ends; Open loads them. A
// crash loses at most SaveInterval of counts. The same file keeps the
// sending state of each domain's report (its report-id, attempts, the
// rua URIs that have not taken it yet), so a restart neither sends a report
// twice nor forgets one it owes. A file that does not parse is renamed to
// <name>.corrupt and logged: reporting is optional, the relay starts.
//
// # Sending (RFC 8460 sections 3, 5)
//
// When a UTC day is over, each of its domains' reports goes out after a
// random delay of up to MaxDelay (4 hours by default): section 4.1 asks for
// "some delay, perhaps several hours" so the receivers are not all hit at
// midnight. The policy domain's TXT record at _smtp._tls.<domain> (section
// 3) must be exactly one record starting with v=TLSRPTv1; its rua URIs are
// all used: mailto: (section 5.3) as one RFC 5322 message to all the mailto
// addresses, multipart/report; report-type="tlsrpt" with the gzip JSON as an
// application/tlsrpt+gzip attachment named
// submitter!policy-domain!begin!end!unique-id.json.gz, handed to
// Options.Submit (the relay signs it with DKIM of the sender's domain and
// queues it); https: (section 5.4) as a POST of the gzip JSON with
// Content-Type application/tlsrpt+gzip, PKIX-verified against RootCAs, no
// redirect followed (a 3xx is a failure), any 2xx a success. A domain
// without a valid record gets no report (logged).
//
// Section 5.3 wants a report delivered "despite any TLS-related failures"
// (it may be about them) and its own session left out of the next report:
// the message carries TLS-Required: No (RFC 8689 section 5), which delivery
// must honor, and delivery does not Record the sessions of such messages.
//
// A URI that failed is tried again with exponential back-off (RetryBackoff,
// doubling) up to MaxAttempts attempts, and not past 24 hours after the
// first (section 5.5); a URI that took the report is not sent it again.
//
// Send makes the same attempts now, for an operator (the relay's admin
// API), sharing Run's state: one attempt at a time per report, never sent
// twice, Run's back-off after a failure. A report's counts stop at its first
// attempt, so a report sent on its own day covers the day until then
// (Summary says Partial). Summary shows each domain's counts and report
// state.
//
// The https: client dials only what Options.AllowAddr allows, public
// unicast addresses by default: the rua URI comes from a stranger's DNS,
// and must not make the relay POST into the cluster's own network.
//
// # Replicas
//
// Each relay replica counts and reports its own sessions, with its own
// report-id (128 random bits), and never merges with its peers: RFC 8460
// section 4.4 lets a receiver get several reports for one domain and day
// (one per sending MTA or cluster member), told apart by report-id. A
// replica that leaves for good takes its unsent counts with it (its
// directory is its own, under the spool).
package tlsrpt
