package mtasts

import (
	"strings"
	"time"
)

// Mode is a policy's mode (RFC 8461 section 5).
type Mode string

const (
	// ModeEnforce: deliver only to MX hosts that match the policy, over TLS
	// with a PKIX-valid certificate for the MX name; otherwise defer.
	ModeEnforce Mode = "enforce"
	// ModeTesting: deliver as without a policy, and report failures (RFC 8460).
	ModeTesting Mode = "testing"
	// ModeNone: the domain has no active policy. Lookup never returns a
	// policy in this mode; the cache keeps it only so that its id is not
	// fetched again.
	ModeNone Mode = "none"
)

// maxMaxAge is the largest max_age a policy may declare (RFC 8461 section
// 3.2): one year of 365.25 days, in seconds.
const maxMaxAge = 31557600

// Policy is one domain's policy (RFC 8461 section 3.2). A Policy that Lookup
// returns is shared: read it, never modify it.
type Policy struct {
	// Domain is the Policy Domain, an A-label in lower case.
	Domain string
	// ID is the id of the TXT record that announced this policy (section
	// 3.1): a new id means a new policy to fetch.
	ID string
	// Mode is enforce, testing or none.
	Mode Mode
	// MX are the mx patterns in lower case, in the order of the policy: host
	// names, or "*." and a domain (section 4.1).
	MX []string
	// MaxAge is how long the policy may be cached from Fetched (section 3.2).
	MaxAge time.Duration
	// Fetched is when the policy was fetched; it expires at Fetched+MaxAge.
	Fetched time.Time
	// Text is the policy body as fetched (TLS-RPT's policy-string is its
	// lines, RFC 8460 section 4.4: see Lines).
	Text string
}

// Expires returns when the policy stops applying: Fetched+MaxAge.
func (p *Policy) Expires() time.Time { return p.Fetched.Add(p.MaxAge) }

// Match reports whether an MX host name (no final dot, lower case; both
// are normalised anyway) matches one of the policy's mx patterns (RFC 8461
// section 4.1): a pattern is the host name itself, or "*." and a domain,
// which matches exactly one label to the left of that domain
// ("*.example.com" matches "mx1.example.com", neither "a.b.example.com" nor
// "example.com").
func (p *Policy) Match(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pattern := range p.MX {
		if parent, ok := strings.CutPrefix(pattern, "*."); ok {
			label, rest, found := strings.Cut(host, ".")
			if found && label != "" && rest == parent {
				return true
			}
			continue
		}
		if host == pattern {
			return true
		}
	}
	return false
}

// Lines returns the policy body's lines without their line ends, as
// TLS-RPT's policy-string wants them (RFC 8460 section 4.4); blank lines at
// the end, which the parser tolerates, are left out.
func (p *Policy) Lines() []string {
	text := strings.TrimRight(p.Text, "\r\n")
	if text == "" {
		return nil
	}
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSuffix(l, "\r")
	}
	return lines
}
