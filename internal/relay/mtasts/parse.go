package mtasts

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ParsePolicy parses a policy body (RFC 8461 section 3.2) strictly:
// "key: value" lines ended by CRLF or LF, "version: STSv1" first, mode
// enforce, testing or none, max_age 0 to 31557600 seconds, one or more mx
// patterns unless the mode is none. Unknown keys are ignored once their line
// is well formed (section 3.2: "unknown fields SHOULD be ignored"); version,
// mode and max_age may appear once each. Blank lines at the end are
// tolerated, not between fields. Errors name the line. The result has Mode,
// MX, MaxAge and Text set; the caller fills in Domain, ID and Fetched.
func ParsePolicy(text string) (*Policy, error) {
	if !utf8.ValidString(text) {
		return nil, errors.New("the policy is not UTF-8 text")
	}
	body := strings.TrimRight(text, "\r\n")
	if body == "" {
		return nil, errors.New("the policy is empty")
	}
	lines := strings.Split(body, "\n")
	p := &Policy{Text: text}
	var haveMode, haveMaxAge bool
	for i, line := range lines {
		n := i + 1
		line = strings.TrimSuffix(line, "\r")
		key, value, err := policyField(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if n == 1 {
			if key != "version" || value != "STSv1" {
				return nil, fmt.Errorf(`line 1: the policy must start with "version: STSv1", not %q`, line)
			}
			continue
		}
		switch key {
		case "version":
			return nil, fmt.Errorf("line %d: a second version field", n)
		case "mode":
			if haveMode {
				return nil, fmt.Errorf("line %d: a second mode field", n)
			}
			haveMode = true
			switch Mode(value) {
			case ModeEnforce, ModeTesting, ModeNone:
				p.Mode = Mode(value)
			default:
				return nil, fmt.Errorf("line %d: mode %q is not enforce, testing or none", n, value)
			}
		case "max_age":
			if haveMaxAge {
				return nil, fmt.Errorf("line %d: a second max_age field", n)
			}
			haveMaxAge = true
			secs, err := parseMaxAge(value)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			p.MaxAge = time.Duration(secs) * time.Second
		case "mx":
			pattern := strings.ToLower(value)
			if !validMXPattern(pattern) {
				return nil, fmt.Errorf(`line %d: mx %q is neither a host name nor "*." and a domain`, n, value)
			}
			p.MX = append(p.MX, pattern)
		}
	}
	switch {
	case !haveMode:
		return nil, errors.New("the policy has no mode field")
	case !haveMaxAge:
		return nil, errors.New("the policy has no max_age field")
	case len(p.MX) == 0 && p.Mode != ModeNone:
		return nil, fmt.Errorf("the policy has mode %s and no mx field", p.Mode)
	}
	return p, nil
}

// policyField splits one policy line into key and value by the grammar of
// section 3.2: an extension name (which the known keys are too), a colon,
// optional white space, a value of visible characters and inner spaces,
// optional trailing white space.
func policyField(line string) (key, value string, err error) {
	key, value, found := strings.Cut(line, ":")
	if !found {
		if line == "" {
			return "", "", errors.New("a blank line between fields")
		}
		return "", "", fmt.Errorf(`%q is not a "key: value" field`, line)
	}
	if !validFieldName(key) {
		return "", "", fmt.Errorf("%q is not a field name (a letter or digit, then up to 31 letters, digits, '_', '-' or '.')", key)
	}
	value = strings.TrimRight(strings.TrimLeft(value, " \t"), " \t")
	if value == "" {
		return "", "", fmt.Errorf("field %s has no value", key)
	}
	for _, r := range value {
		if r < 0x20 || r == 0x7f {
			return "", "", fmt.Errorf("the value of field %s holds the control character %U", key, r)
		}
	}
	return key, value, nil
}

// validFieldName: sts-policy-ext-name and sts-ext-name (sections 3.1,
// 3.2): (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".").
func validFieldName(s string) bool {
	if s == "" || len(s) > 32 || !isAlnum(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '-' && c != '.' {
			return false
		}
	}
	return true
}

// parseMaxAge: 1*10 DIGIT, at most 31557600 (section 3.2).
func parseMaxAge(s string) (int64, error) {
	if len(s) > 10 || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("max_age %q is not a number of seconds", s)
	}
	secs, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("max_age %q is not a number of seconds", s)
	}
	if secs > maxMaxAge {
		return 0, fmt.Errorf("max_age %d is over %d seconds (one year)", secs, maxMaxAge)
	}
	return secs, nil
}

// validMXPattern: ["*."] Domain (section 3.2), Domain as RFC 5321 section
// 4.1.2 has it, in lower case.
func validMXPattern(s string) bool {
	return validHostname(strings.TrimPrefix(s, "*."))
}

// validHostname checks an RFC 5321 Domain in lower case: labels of letters,
// digits and inner hyphens, 1 to 63 octets each, 253 in all, no final dot.
func validHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isLowerAlnum(c) && c != '-' {
				return false
			}
		}
	}
	return true
}

// parseRecord parses the text of one _mta-sts TXT record (RFC 8461
// section 3.1): "v=STSv1", then fields separated by ";" with optional white
// space around it, an optional final ";"; exactly one id of 1 to 32 letters
// and digits; other fields are extensions, checked for syntax and ignored.
// Trailing white space is tolerated. It returns the id.
func parseRecord(txt string) (string, error) {
	rest, ok := strings.CutPrefix(txt, "v=STSv1")
	if !ok {
		return "", errors.New(`the record does not start with "v=STSv1"`)
	}
	rest = strings.TrimRight(rest, " \t")
	parts := strings.Split(rest, ";")
	if len(parts) < 2 || strings.Trim(parts[0], " \t") != "" {
		return "", errors.New(`"v=STSv1" is not followed by ";" and a field`)
	}
	fields := parts[1:]
	if last := len(fields) - 1; last > 0 && fields[last] == "" {
		fields = fields[:last] // the optional final ";"
	}
	var id string
	for _, f := range fields {
		f = strings.Trim(f, " \t") // *WSP on both sides of ";"
		name, value, found := strings.Cut(f, "=")
		if !found || !validFieldName(name) {
			return "", fmt.Errorf("%q is not a name=value field", f)
		}
		if name == "id" {
			if id != "" {
				return "", errors.New("a second id field")
			}
			if !validID(value) {
				return "", fmt.Errorf("id %q is not 1 to 32 letters and digits", value)
			}
			id = value
			continue
		}
		// sts-ext-value: 1*(%x21-3A / %x3C / %x3E-7E).
		if value == "" {
			return "", fmt.Errorf("field %s has no value", name)
		}
		for i := 0; i < len(value); i++ {
			if c := value[i]; c < 0x21 || c > 0x7e || c == ';' || c == '=' {
				return "", fmt.Errorf("the value of field %s holds %q", name, c)
			}
		}
	}
	if id == "" {
		return "", errors.New("the record has no id field")
	}
	return id, nil
}

// isSTSRecord tells the records that take part in discovery from the
// others at the same name (section 3.1: "records that do not begin with
// v=STSv1; are discarded"); white space before the ";" is allowed as the
// grammar allows it.
func isSTSRecord(txt string) bool {
	rest, ok := strings.CutPrefix(txt, "v=STSv1")
	return ok && strings.HasPrefix(strings.TrimLeft(rest, " \t"), ";")
}

// validID: sts-id (section 3.1), 1 to 32 letters and digits.
func validID(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAlnum(s[i]) {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool { return isLowerAlnum(c) || 'A' <= c && c <= 'Z' }

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }
