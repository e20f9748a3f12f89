package shaping

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The shipped policy parses, and each provider's hosts get its rule.
func TestDefaultPolicy(t *testing.T) {
	p, err := Parse([]byte(DefaultPolicyYAML()))
	if err != nil {
		t.Fatalf("the shipped policy does not parse: %v", err)
	}
	for _, tc := range []struct {
		hosts []string
		rule  string
		want  Limits
	}{
		{[]string{"aspmx.l.google.com"}, "google", Limits{5, 50, 6000, 0, 100}},
		{[]string{"gmail-smtp-in.l.google.com"}, "google", Limits{5, 50, 6000, 0, 100}},
		{[]string{"contoso-com.mail.protection.outlook.com"}, "microsoft", Limits{5, 50, 6000, 0, 100}},
		{[]string{"hotmail-com.olc.protection.outlook.com"}, "microsoft", Limits{5, 50, 6000, 0, 100}},
		{[]string{"contoso-com.r-v1.mx.microsoft"}, "microsoft", Limits{5, 50, 6000, 0, 100}},
		{[]string{"mta5.am0.yahoodns.net"}, "yahoo", Limits{5, 20, 6000, 0, 100}},
		{[]string{"mx-aol.mail.gm0.yahoodns.net"}, "yahoo", Limits{5, 20, 6000, 0, 100}},
		{[]string{"mx01.mail.icloud.com", "mx02.mail.icloud.com"}, "apple", Limits{10, 5, 6000, 0, 100}},
		{[]string{"mx00.gmx.net"}, "gmx-webde", Limits{4, 20, 60, 0, 100}},
		{[]string{"mx-ha03.web.de"}, "gmx-webde", Limits{4, 20, 60, 0, 100}},
		{[]string{"mx00.ionos.de"}, "gmx-webde", Limits{4, 20, 60, 0, 100}},
		{[]string{"mx.example.org"}, "default", Limits{10, 100, 6000, 0, 100}},
		// Only the host's own suffix counts: not a look-alike.
		{[]string{"mx.notgoogle.com"}, "default", Limits{10, 100, 6000, 0, 100}},
	} {
		got, rule := p.LimitsFor(SiteOf(tc.hosts))
		if rule != tc.rule || got != tc.want {
			t.Errorf("%q: rule %s %+v, want %s %+v", tc.hosts, rule, got, tc.rule, tc.want)
		}
	}
	if DefaultPolicy() == nil {
		t.Fatal("DefaultPolicy is nil")
	}
}

// The replies the shipped policy knows as throttles, and the ones it must
// not take for one.
func TestDefaultPolicyThrottleReplies(t *testing.T) {
	p := DefaultPolicy()
	apple := SiteOf([]string{"mx01.mail.icloud.com"})
	microsoft := SiteOf([]string{"contoso-com.mail.protection.outlook.com"})
	gmx := SiteOf([]string{"mx00.gmx.net"})
	for _, tc := range []struct {
		site     Site
		reply    Reply
		throttle bool
	}{
		{googleSite, Reply{421, "4.7.28", "Gmail has detected an unusual rate of unsolicited mail originating from your DKIM domain. To protect our users from spam, mail sent from your domain has been temporarily rate limited. - gsmtp"}, true},
		{googleSite, Reply{421, "4.7.0", "Try again later, closing connection. (EHLO) - gsmtp"}, true},
		{googleSite, Reply{421, "4.4.5", "Server busy, try again later. - gsmtp"}, true},
		{microsoft, Reply{451, "4.7.650", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://aka.ms/postmaster (S775)"}, true},
		{microsoft, Reply{451, "4.7.651", "The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. (S3114)"}, true},
		{yahooSite, Reply{421, "4.7.0", "[TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"}, true},
		{yahooSite, Reply{421, "", "[IPTS04] Messages from 192.0.2.1 temporarily deferred"}, true},
		{apple, Reply{421, "", "[HCM1] Your mail from 192.0.2.1 was deferred."}, true},
		{apple, Reply{451, "4.7.1", "Service unavailable - try again later"}, true},
		{gmx, Reply{421, "", "gmx.net (mxgmx117) Nemesis ESMTP Service not available Reject due to policy restrictions. Too many messages have been received in a short period of time."}, true},
		// Any site: the default rule's generic replies.
		{otherSite, Reply{421, "4.7.0", "Too many connections from your host"}, true},
		{otherSite, Reply{451, "4.7.1", "You have been temporarily rate limited"}, true},
		// Not throttles: replies about one recipient or message, and
		// site-specific codes at another site.
		{googleSite, Reply{450, "4.2.1", "The user you are trying to contact is receiving mail too quickly. Please resend your message at a later time. - gsmtp"}, false},
		{apple, Reply{421, "4.7.1", "Messages to user@icloud.com deferred due to excessive volume. Try again later"}, false},
		{otherSite, Reply{451, "4.7.1", "Greylisted, please try again later"}, false},
		{otherSite, Reply{452, "4.2.2", "Mailbox full"}, false},
		{otherSite, Reply{421, "4.3.0", "Temporary System Problem. Try again later"}, false},
		{otherSite, Reply{421, "", "Too many recipients"}, false},
		{otherSite, Reply{550, "5.1.1", "User unknown"}, false},
		{otherSite, Reply{451, "4.7.650", "The mail server has been delayed"}, false},
		{googleSite, Reply{421, "", "[TSS04] Messages deferred"}, false},
	} {
		l := NewLimiter(p, newFakeClock())
		if got := l.Observe(tc.site, tc.reply); got != tc.throttle {
			t.Errorf("site %s, reply %v: throttle %v, want %v", tc.site.Name, tc.reply, got, tc.throttle)
		}
	}
}

// A pattern built in Go, not by Parse, has no compiled text: it matches
// nothing rather than every reply.
func TestUncompiledPatternMatchesNothing(t *testing.T) {
	p := ReplyPattern{Text: "rate"}
	if p.matches(Reply{421, "4.7.0", "anything"}) || p.matches(Reply{421, "", "rate"}) {
		t.Fatal("an uncompiled pattern matched")
	}
	var m *Match
	if m.matches(googleSite) {
		t.Fatal("a nil match matched")
	}
}

const minimal = `
default:
  maxConnections: 3
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`

func TestParseInherits(t *testing.T) {
	p := mustParse(t, `
default:
  maxConnections: 8
  maxMessagesPerConnection: 10
  maxMessagesPerMinute: 100
  maxNewConnectionsPerMinute: 20
  throttleReplies: [{text: 'slow down'}]
  suspension: {initial: 1m, max: 1h, resetAfter: 2h}
sites:
  - name: big
    match: {mxHostSuffixes: [big.example]}
    maxConnections: 2
    maxMessagesPerHour: 500
    throttleReplies: [{code: 421, enhancedCode: 4.7.99}]
    suspension: {initial: 10m}
`)
	big := SiteOf([]string{"mx1.big.example"})
	got, rule := p.LimitsFor(big)
	if want := (Limits{2, 10, 100, 500, 20}); rule != "big" || got != want {
		t.Errorf("big: %s %+v, want big %+v", rule, got, want)
	}
	r := p.resolve(p.RuleFor(big))
	if r.suspension != (suspension{10 * time.Minute, time.Hour, 2 * time.Hour}) {
		t.Errorf("suspension %+v", r.suspension)
	}
	if len(r.patterns) != 2 || r.patterns[0].EnhancedCode != "4.7.99" || r.patterns[1].Text != "slow down" {
		t.Errorf("patterns: the rule's then the default's, got %v", r.patterns)
	}
	// The same policy as JSON.
	j := mustParse(t, `{"default": {"maxConnections": 8, "suspension": {"initial": "1m", "max": "1h", "resetAfter": "2h"}},
		"sites": [{"name": "big", "match": {"sites": ["big.example"]}, "maxConnections": 2}]}`)
	if got, rule := j.LimitsFor(big); rule != "big" || got.MaxConnections != 2 {
		t.Errorf("JSON: %s %+v", rule, got)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string // each in the error
	}{
		{"empty", ``, []string{"shaping policy: empty"}},
		{"no default", `sites: []`, []string{"default: required"}},
		{"unknown top field", minimal + "limits: {}\n", []string{`unknown field "limits"`}},
		{"unknown rule field", minimal + `
sites:
  - name: google
    match: {sites: [google.com]}
    maxConections: 3
`, []string{`sites[0] ("google")`, `unknown field "maxConections"`}},
		{"unknown default field", `
default:
  maxConnections: 3
  maxConnection: 4
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`, []string{"default:", `unknown field "maxConnection"`}},
		{"key case", `
default:
  MaxConnections: 3
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`, []string{`unknown field "MaxConnections"`}},
		{"duplicate key", `
default:
  maxConnections: 3
  maxConnections: 4
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`, []string{`"maxConnections"`}},
		{"default without maxConnections", `
default:
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`, []string{"default.maxConnections: required"}},
		{"default without suspension", `
default:
  maxConnections: 3
  suspension: {initial: 5m}
`, []string{"default.suspension: initial, max and resetAfter are required"}},
		{"default with match", `
default:
  maxConnections: 3
  match: {sites: [a.example]}
  suspension: {initial: 5m, max: 1h, resetAfter: 1h}
`, []string{"default.match"}},
		{"negative limit", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    maxMessagesPerMinute: -1
`, []string{`sites[0] ("g").maxMessagesPerMinute: -1 is not in 0..1000000`}},
		{"zero connections", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    maxConnections: 0
`, []string{`sites[0] ("g").maxConnections: 0 is not in 1..1000000`}},
		{"string limit", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    maxConnections: "5"
`, []string{`sites[0] ("g")`, "maxConnections"}},
		{"bad regexp", minimal + `
sites:
  - name: yahoo
    match: {mxHostSuffixes: [.yahoodns.net]}
    throttleReplies: [{text: '[TSS04'}]
`, []string{`sites[0] ("yahoo").throttleReplies[0].text:`, "missing closing ]"}},
		{"bad enhanced code", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    throttleReplies: [{enhancedCode: "4.7"}]
`, []string{`sites[0] ("g").throttleReplies[0].enhancedCode: "4.7" is not an RFC 3463 status code`}},
		{"success code", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    throttleReplies: [{code: 250}]
`, []string{`throttleReplies[0].code: 250 is not a failure reply code`}},
		{"empty pattern", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    throttleReplies: [{}]
`, []string{`sites[0] ("g").throttleReplies[0].code: a pattern needs code, enhancedCode or text`}},
		{"duplicate names", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
  - name: g
    match: {sites: [googlemail.com]}
`, []string{`sites[1] ("g").name: also the name of sites[0]`}},
		{"no name", minimal + `
sites:
  - match: {sites: [google.com]}
`, []string{`sites[0].name: required`}},
		{"name default", minimal + `
sites:
  - name: default
    match: {sites: [google.com]}
`, []string{`"default" is the default rule's name`}},
		{"bad name", minimal + `
sites:
  - name: Google Mail
    match: {sites: [google.com]}
`, []string{`sites[0] ("Google Mail").name: "Google Mail": use lowercase`}},
		{"no match", minimal + `
sites:
  - name: g
`, []string{`sites[0] ("g").match: required`}},
		{"wildcard suffix", minimal + `
sites:
  - name: g
    match: {mxHostSuffixes: ["*.google.com"]}
`, []string{`sites[0] ("g").match.mxHostSuffixes[0]: "*.google.com" is not a lowercase host name suffix`}},
		{"bad duration", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    suspension: {initial: 5 minutes}
`, []string{`sites[0] ("g"): suspension.initial: "5 minutes" is not a duration`}},
		{"initial over inherited max", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    suspension: {initial: 2h}
`, []string{`sites[0] ("g").suspension: initial 2h0m0s is longer than max 1h0m0s`}},
		{"negative duration", minimal + `
sites:
  - name: g
    match: {sites: [google.com]}
    suspension: {max: -1m}
`, []string{`sites[0] ("g").suspension.max: -1m0s is not in (0, 168h0m0s]`}},
		{"not yaml", "default: [", []string{"shaping policy:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("Parse succeeded, want an error with %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nwant it to contain %q", err, w)
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(DefaultPolicyYAML()))
	f.Add([]byte(minimal))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			return
		}
		// A policy that parses resolves every site without panicking.
		for _, s := range []Site{googleSite, otherSite, {}} {
			l, _ := p.LimitsFor(s)
			if l.MaxConnections < 1 {
				t.Fatalf("MaxConnections %d", l.MaxConnections)
			}
		}
	})
}

// A parsed policy written as JSON (as the operator would publish it) parses
// back to the same policy.
func TestPolicyJSONRoundTrip(t *testing.T) {
	p := DefaultPolicy()
	j, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	q, err := Parse(j)
	if err != nil {
		t.Fatalf("Parse of its own JSON: %v\n%s", err, j)
	}
	again, _ := json.Marshal(q)
	if string(again) != string(j) {
		t.Fatalf("round trip changed the policy:\n%s\n%s", j, again)
	}
	for _, s := range []Site{googleSite, yahooSite, otherSite} {
		a, ra := p.LimitsFor(s)
		b, rb := q.LimitsFor(s)
		if a != b || ra != rb {
			t.Errorf("%s: %s %+v, after the round trip %s %+v", s.Name, ra, a, rb, b)
		}
	}
}
