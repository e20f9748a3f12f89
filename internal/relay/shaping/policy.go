package shaping

import (
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

// Bounds of a policy, so that a policy cannot make a relay spend unbounded
// memory or time matching (as the CRDs' MaxItems do).
const (
	maxRules          = 200
	maxPatterns       = 50
	maxMatchEntries   = 100
	maxPatternLength  = 500
	maxLimitValue     = 1_000_000
	maxSuspensionTime = 7 * 24 * time.Hour
)

// Policy is the traffic shaping policy the platform team writes: per-site
// limits and the replies that mean "slow down". A site takes the first
// rule in Sites that matches it, else Default; a field a site rule leaves
// out is the Default's. The file format is YAML or JSON with exactly these
// field names (see Parse); DefaultPolicyYAML is the policy that ships.
//
// A Policy the Limiter uses comes from Parse (which validates it and
// compiles its patterns) and is not changed afterwards: SetPolicy takes a
// new one.
type Policy struct {
	// Default applies to every site no rule matches, and fills in what a
	// rule leaves out. It must set maxConnections and suspension.
	Default Rule `json:"default"`
	// Sites are the rules for particular sites, first match wins.
	Sites []Rule `json:"sites,omitempty"`
}

// Rule is the limits of the sites it matches. A limit left out is the
// default rule's; 0 means no limit (maxConnections excepted: at least 1).
type Rule struct {
	// Name names the rule in errors, logs and Stats; required for site
	// rules, unique; "default" for the default rule.
	Name string `json:"name,omitempty"`
	// Match says which sites the rule covers; required for site rules,
	// not allowed in the default rule.
	Match *Match `json:"match,omitempty"`

	// MaxConnections is how many connections a relay holds open to the
	// site at once.
	MaxConnections *int `json:"maxConnections,omitempty"`
	// MaxMessagesPerConnection is how many messages one connection
	// carries before it is closed and a new one opened.
	MaxMessagesPerConnection *int `json:"maxMessagesPerConnection,omitempty"`
	// MaxMessagesPerMinute and MaxMessagesPerHour bound the messages
	// (transactions) sent to the site in any minute and any hour.
	MaxMessagesPerMinute *int `json:"maxMessagesPerMinute,omitempty"`
	MaxMessagesPerHour   *int `json:"maxMessagesPerHour,omitempty"`
	// MaxNewConnectionsPerMinute bounds how many connections are opened
	// to the site in any minute.
	MaxNewConnectionsPerMinute *int `json:"maxNewConnectionsPerMinute,omitempty"`

	// ThrottleReplies are the replies that suspend the site. A site
	// rule's patterns apply in addition to the default rule's.
	ThrottleReplies []ReplyPattern `json:"throttleReplies,omitempty"`
	// Suspension says how long a throttle reply suspends the site.
	Suspension *Suspension `json:"suspension,omitempty"`
}

// Match selects sites: by site name (SiteOf), or by the suffix of any of
// the site's MX hosts.
type Match struct {
	// Sites are site names, such as "google.com".
	Sites []string `json:"sites,omitempty"`
	// MXHostSuffixes match a site when one of its MX hosts is the suffix
	// or under it: ".mail.protection.outlook.com" (the leading dot is
	// optional) matches contoso-com.mail.protection.outlook.com.
	MXHostSuffixes []string `json:"mxHostSuffixes,omitempty"`
}

// ReplyPattern recognizes a throttle reply. Every field given must match;
// at least one must be given.
type ReplyPattern struct {
	// Code is the SMTP reply code, such as 421; 0 matches any.
	Code int `json:"code,omitempty"`
	// EnhancedCode is the RFC 3463 status code, such as "4.7.28"; empty
	// matches any.
	EnhancedCode string `json:"enhancedCode,omitempty"`
	// Text is a regular expression (RE2 syntax, case-insensitive) found
	// anywhere in the reply text; empty matches any.
	Text string `json:"text,omitempty"`

	re *regexp.Regexp
}

// Suspension is how long a throttle reply stops delivery to a site: the
// first suspension lasts Initial; each throttle reply after a suspension
// ended and before ResetAfter has passed doubles it, up to Max; once
// ResetAfter has passed without one, the next starts at Initial again.
type Suspension struct {
	Initial    *Duration `json:"initial,omitempty"`
	Max        *Duration `json:"max,omitempty"`
	ResetAfter *Duration `json:"resetAfter,omitempty"`
}

// UnmarshalJSON reads the three durations strictly, so that an error names
// the field ("suspension.initial").
func (s *Suspension) UnmarshalJSON(b []byte) error {
	var raw struct {
		Initial    *string `json:"initial,omitempty"`
		Max        *string `json:"max,omitempty"`
		ResetAfter *string `json:"resetAfter,omitempty"`
	}
	if err := strict(b, &raw); err != nil {
		return fmt.Errorf("suspension: %w", err)
	}
	var errs []error
	parse := func(name string, v *string) *Duration {
		if v == nil {
			return nil
		}
		d, err := time.ParseDuration(*v)
		if err != nil {
			errs = append(errs, fmt.Errorf("suspension.%s: %q is not a duration such as \"5m\" or \"1h30m\"", name, *v))
			return nil
		}
		return (*Duration)(&d)
	}
	*s = Suspension{
		Initial:    parse("initial", raw.Initial),
		Max:        parse("max", raw.Max),
		ResetAfter: parse("resetAfter", raw.ResetAfter),
	}
	return errors.Join(errs...)
}

// Duration is a time.Duration written as Go writes it ("5m", "1h30m").
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

//go:embed defaults.yaml
var defaultsYAML string

// DefaultPolicyYAML returns the policy that ships (defaults.yaml): limits
// for the large mailbox providers and a conservative default, with the
// source of each number in its comments. Platform teams start their own
// from it; a policy given to the relay replaces it as a whole.
func DefaultPolicyYAML() string { return defaultsYAML }

// DefaultPolicy parses DefaultPolicyYAML. Its tests make sure it parses.
func DefaultPolicy() *Policy {
	p, err := Parse([]byte(defaultsYAML))
	if err != nil {
		panic("shaping: the shipped default policy does not parse: " + err.Error())
	}
	return p
}

// Parse reads a policy from YAML or JSON. It is strict, as the guardrail
// policy is (docs/design.md contract 7): unknown and duplicate fields are
// errors, keys match exactly (maxconnections is not maxConnections), and
// every error names the rule and the field, so that a typo can never
// silently leave a limit out.
func Parse(data []byte) (*Policy, error) {
	p, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("shaping policy: %w", err)
	}
	return p, nil
}

func parse(data []byte) (*Policy, error) {
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, err
	}
	if s := strings.TrimSpace(string(j)); s == "null" || s == "" {
		return nil, errors.New("empty: a policy needs at least a default rule")
	}
	// The top level first, keeping rules raw, so that an error inside a
	// rule can name the rule.
	var top struct {
		Default json.RawMessage   `json:"default"`
		Sites   []json.RawMessage `json:"sites,omitempty"`
	}
	if err := strict(j, &top); err != nil {
		return nil, err
	}
	if top.Default == nil {
		return nil, errors.New("default: required")
	}
	if len(top.Sites) > maxRules {
		return nil, fmt.Errorf("sites: %d rules, at most %d", len(top.Sites), maxRules)
	}
	p := &Policy{}
	var errs []error
	if err := strict(top.Default, &p.Default); err != nil {
		errs = append(errs, fmt.Errorf("default: %w", err))
	}
	p.Sites = make([]Rule, len(top.Sites))
	for i, raw := range top.Sites {
		if err := strict(raw, &p.Sites[i]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", ruleLabel(i, nameOf(raw)), err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if err := p.validate(); err != nil {
		return nil, err
	}
	return p, nil
}

// strict decodes JSON refusing unknown, duplicate and case-mismatched keys.
func strict(j []byte, v any) error {
	strictErrs, err := kjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// nameOf reads a rule's name leniently, for error messages only.
func nameOf(raw json.RawMessage) string {
	var r struct {
		Name string `json:"name"`
	}
	_ = json.Unmarshal(raw, &r)
	return r.Name
}

func ruleLabel(i int, name string) string {
	if name == "" {
		return fmt.Sprintf("sites[%d]", i)
	}
	return fmt.Sprintf("sites[%d] (%q)", i, name)
}

// validate checks every rule and compiles the reply patterns.
func (p *Policy) validate() error {
	var errs []error
	d := &p.Default
	if d.Name != "" && d.Name != "default" {
		errs = append(errs, fmt.Errorf("default.name: %q: the default rule is named \"default\" or not at all", d.Name))
	}
	d.Name = "default"
	if d.Match != nil {
		errs = append(errs, errors.New("default.match: the default rule matches every site; remove match"))
	}
	if d.MaxConnections == nil {
		errs = append(errs, errors.New("default.maxConnections: required"))
	}
	if d.Suspension == nil || d.Suspension.Initial == nil || d.Suspension.Max == nil || d.Suspension.ResetAfter == nil {
		errs = append(errs, errors.New("default.suspension: initial, max and resetAfter are required"))
	}
	errs = append(errs, d.check("default")...)
	seen := map[string]int{}
	for i := range p.Sites {
		r := &p.Sites[i]
		label := ruleLabel(i, r.Name)
		switch {
		case r.Name == "":
			errs = append(errs, fmt.Errorf("%s.name: required", label))
		case r.Name == "default":
			errs = append(errs, fmt.Errorf("%s.name: \"default\" is the default rule's name", label))
		case !validName(r.Name):
			errs = append(errs, fmt.Errorf("%s.name: %q: use lowercase letters, digits, '.', '-' and '_', at most 63", label, r.Name))
		}
		if j, dup := seen[r.Name]; dup && r.Name != "" {
			errs = append(errs, fmt.Errorf("%s.name: also the name of sites[%d]", label, j))
		} else {
			seen[r.Name] = i
		}
		errs = append(errs, r.checkMatch(label)...)
		errs = append(errs, r.check(label)...)
	}
	// The effective suspension of every rule, merged, must be coherent.
	if len(errs) == 0 {
		for i := range p.Sites {
			if err := checkSuspension(ruleLabel(i, p.Sites[i].Name), p.resolve(&p.Sites[i]).suspension); err != nil {
				errs = append(errs, err)
			}
		}
		if err := checkSuspension("default", p.resolve(&p.Default).suspension); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func validName(s string) bool {
	if len(s) > 63 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func (r *Rule) checkMatch(label string) []error {
	if r.Match == nil || len(r.Match.Sites)+len(r.Match.MXHostSuffixes) == 0 {
		return []error{fmt.Errorf("%s.match: required: sites or mxHostSuffixes", label)}
	}
	var errs []error
	if n := len(r.Match.Sites) + len(r.Match.MXHostSuffixes); n > maxMatchEntries {
		errs = append(errs, fmt.Errorf("%s.match: %d entries, at most %d", label, n, maxMatchEntries))
	}
	for k, s := range r.Match.Sites {
		if s == "" || s != strings.ToLower(s) || strings.ContainsAny(s, " \t") {
			errs = append(errs, fmt.Errorf("%s.match.sites[%d]: %q is not a lowercase site name", label, k, s))
		}
	}
	for k, s := range r.Match.MXHostSuffixes {
		t := strings.TrimPrefix(s, ".")
		if t == "" || t != strings.ToLower(t) || strings.ContainsAny(t, " \t*") || strings.HasSuffix(t, ".") {
			errs = append(errs, fmt.Errorf("%s.match.mxHostSuffixes[%d]: %q is not a lowercase host name suffix (no '*', no trailing dot)", label, k, s))
		}
	}
	return errs
}

// check validates the limits and patterns of one rule.
func (r *Rule) check(label string) []error {
	var errs []error
	limit := func(field string, v *int, min int) {
		if v != nil && (*v < min || *v > maxLimitValue) {
			errs = append(errs, fmt.Errorf("%s.%s: %d is not in %d..%d", label, field, *v, min, maxLimitValue))
		}
	}
	limit("maxConnections", r.MaxConnections, 1)
	limit("maxMessagesPerConnection", r.MaxMessagesPerConnection, 0)
	limit("maxMessagesPerMinute", r.MaxMessagesPerMinute, 0)
	limit("maxMessagesPerHour", r.MaxMessagesPerHour, 0)
	limit("maxNewConnectionsPerMinute", r.MaxNewConnectionsPerMinute, 0)
	if len(r.ThrottleReplies) > maxPatterns {
		errs = append(errs, fmt.Errorf("%s.throttleReplies: %d patterns, at most %d", label, len(r.ThrottleReplies), maxPatterns))
	}
	for k := range r.ThrottleReplies {
		if err := r.ThrottleReplies[k].compile(); err != nil {
			errs = append(errs, fmt.Errorf("%s.throttleReplies[%d].%w", label, k, err))
		}
	}
	if s := r.Suspension; s != nil {
		for _, f := range []struct {
			name string
			d    *Duration
		}{{"initial", s.Initial}, {"max", s.Max}, {"resetAfter", s.ResetAfter}} {
			if f.d != nil && (*f.d <= 0 || time.Duration(*f.d) > maxSuspensionTime) {
				errs = append(errs, fmt.Errorf("%s.suspension.%s: %s is not in (0, %s]", label, f.name, time.Duration(*f.d), maxSuspensionTime))
			}
		}
	}
	return errs
}

func checkSuspension(label string, s suspension) error {
	if s.initial > s.max {
		return fmt.Errorf("%s.suspension: initial %s is longer than max %s", label, s.initial, s.max)
	}
	return nil
}

// compile checks the pattern and compiles its text. An error starts with
// the field's name, for the caller's prefix.
func (p *ReplyPattern) compile() error {
	if p.Code == 0 && p.EnhancedCode == "" && p.Text == "" {
		return errors.New("code: a pattern needs code, enhancedCode or text (an empty pattern would match every reply)")
	}
	if p.Code != 0 && (p.Code < 400 || p.Code > 599) {
		return fmt.Errorf("code: %d is not a failure reply code (400..599)", p.Code)
	}
	if p.EnhancedCode != "" && !isEnhancedCode(p.EnhancedCode) {
		return fmt.Errorf("enhancedCode: %q is not an RFC 3463 status code such as \"4.7.28\"", p.EnhancedCode)
	}
	if p.Text != "" {
		if len(p.Text) > maxPatternLength {
			return fmt.Errorf("text: %d characters, at most %d", len(p.Text), maxPatternLength)
		}
		re, err := regexp.Compile("(?i)" + p.Text)
		if err != nil {
			return fmt.Errorf("text: %w", err)
		}
		p.re = re
	}
	return nil
}

// isEnhancedCode reports whether s is class.subject.detail (RFC 3463
// section 2) with class 4 or 5.
func isEnhancedCode(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || (parts[0] != "4" && parts[0] != "5") {
		return false
	}
	for _, x := range parts[1:] {
		if n, err := strconv.Atoi(x); err != nil || n < 0 || len(x) > 3 || x != strconv.Itoa(n) {
			return false
		}
	}
	return true
}

// Reply is an SMTP reply as delivery saw it; queue.Reply converts to it
// (shaping.Reply(r)).
type Reply struct {
	Code     int    `json:"code,omitempty"`
	Enhanced string `json:"enhanced,omitempty"`
	Text     string `json:"text,omitempty"`
}

// matches reports whether r is the reply p describes.
func (p *ReplyPattern) matches(r Reply) bool {
	if p.Code != 0 && p.Code != r.Code {
		return false
	}
	if p.EnhancedCode != "" && p.EnhancedCode != r.Enhanced {
		return false
	}
	if p.Text != "" && (p.re == nil || !p.re.MatchString(r.Text)) {
		// p.re is nil in a pattern that did not come from Parse: it
		// matches nothing rather than everything.
		return false
	}
	return true
}

// String renders the pattern for a suspension's reason.
func (p *ReplyPattern) String() string {
	var parts []string
	if p.Code != 0 {
		parts = append(parts, strconv.Itoa(p.Code))
	}
	if p.EnhancedCode != "" {
		parts = append(parts, p.EnhancedCode)
	}
	if p.Text != "" {
		parts = append(parts, "/"+p.Text+"/")
	}
	return strings.Join(parts, " ")
}

// Limits are a rule's effective limits, the default's filled in. 0 means
// no limit, except for MaxConnections (at least 1).
type Limits struct {
	MaxConnections             int
	MaxMessagesPerConnection   int
	MaxMessagesPerMinute       int
	MaxMessagesPerHour         int
	MaxNewConnectionsPerMinute int
}

// suspension is a rule's effective suspension.
type suspension struct {
	initial, max, resetAfter time.Duration
}

// resolved is a rule with the default filled in.
type resolved struct {
	name       string
	limits     Limits
	patterns   []*ReplyPattern
	suspension suspension
}

// resolve fills in what r leaves out from the default rule.
func (p *Policy) resolve(r *Rule) resolved {
	d := &p.Default
	pick := func(v, def *int) int {
		if v != nil {
			return *v
		}
		if def != nil {
			return *def
		}
		return 0
	}
	dur := func(v func(*Suspension) *Duration) time.Duration {
		if r.Suspension != nil && v(r.Suspension) != nil {
			return time.Duration(*v(r.Suspension))
		}
		if d.Suspension != nil && v(d.Suspension) != nil {
			return time.Duration(*v(d.Suspension))
		}
		return 0
	}
	out := resolved{
		name: r.Name,
		limits: Limits{
			MaxConnections:             max(1, pick(r.MaxConnections, d.MaxConnections)),
			MaxMessagesPerConnection:   pick(r.MaxMessagesPerConnection, d.MaxMessagesPerConnection),
			MaxMessagesPerMinute:       pick(r.MaxMessagesPerMinute, d.MaxMessagesPerMinute),
			MaxMessagesPerHour:         pick(r.MaxMessagesPerHour, d.MaxMessagesPerHour),
			MaxNewConnectionsPerMinute: pick(r.MaxNewConnectionsPerMinute, d.MaxNewConnectionsPerMinute),
		},
		suspension: suspension{
			initial:    dur(func(s *Suspension) *Duration { return s.Initial }),
			max:        dur(func(s *Suspension) *Duration { return s.Max }),
			resetAfter: dur(func(s *Suspension) *Duration { return s.ResetAfter }),
		},
	}
	for i := range r.ThrottleReplies {
		out.patterns = append(out.patterns, &r.ThrottleReplies[i])
	}
	if r != d {
		for i := range d.ThrottleReplies {
			out.patterns = append(out.patterns, &d.ThrottleReplies[i])
		}
	}
	return out
}

// RuleFor returns the rule that applies to site: the first site rule that
// matches it, else the default.
func (p *Policy) RuleFor(site Site) *Rule {
	for i := range p.Sites {
		if p.Sites[i].Match.matches(site) {
			return &p.Sites[i]
		}
	}
	return &p.Default
}

// LimitsFor returns the effective limits of site (for one relay, before
// Scale divides them) and the name of the rule they come from.
func (p *Policy) LimitsFor(site Site) (Limits, string) {
	r := p.resolve(p.RuleFor(site))
	return r.limits, r.name
}

func (m *Match) matches(site Site) bool {
	if m == nil {
		return false
	}
	for _, s := range m.Sites {
		if s == site.Name {
			return true
		}
	}
	for _, suf := range m.MXHostSuffixes {
		suf = strings.TrimPrefix(suf, ".")
		for _, h := range site.Hosts {
			if hasHostSuffix(h, suf) {
				return true
			}
		}
	}
	return false
}

// Canonical returns the policy as canonical JSON: every field under its
// own name, the default rule named "default", durations as Go writes them
// ("5m0s"), no comments, the same bytes for the same policy. It is what
// the operator publishes with the routing table (index Secret key
// shaping.json, docs/design.md "How the policy reaches relays"), so that
// only a change of meaning, not of comments or layout, makes a new table
// version; Parse reads it back to an equal Policy.
func (p *Policy) Canonical() ([]byte, error) {
	return json.Marshal(p)
}

// ParseFile reads and parses the policy file at path (a standalone relay's
// --shaping-policy, `postgate check --shaping-policy`); an error names the
// file.
func ParseFile(path string) (*Policy, error) {
	data, err := os.ReadFile(path) //nolint:gosec // the file the user names
	if err != nil {
		return nil, err
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}
