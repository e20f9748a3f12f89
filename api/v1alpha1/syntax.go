package v1alpha1

import (
	"errors"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// The syntax of the values the schema checks, for the Go code that must
// agree with it: the compiler, which judges objects that may not have passed
// an API server, and the SMTP server, which judges envelope addresses. The
// CEL rules of the kubebuilder markers cannot name Go constants, so they
// repeat these patterns verbatim, and a test compares the generated CRDs
// with them.

// Atext is the set of characters RFC 5322 section 3.2.3 allows in an atom
// besides letters and digits, in the order of its ABNF. The apostrophe is
// one of them: o'brien@example.com is a valid address.
const Atext = "!#$%&'*+-/=?^_`{|}~"

// IsAtext reports whether r is an RFC 5322 atext character (ASCII only).
func IsAtext(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune(Atext, r)
}

// IsDotAtom reports whether s is an RFC 5322 dot-atom-text: atext runs
// separated by single dots, none at either end.
func IsDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for _, r := range s {
		if r != '.' && !IsAtext(r) {
			return false
		}
	}
	return true
}

const atextClass = "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"

// EmailAddressPattern is the syntax of an EmailAddress: a dot-atom local
// part (RFC 5322 section 3.2.3), '@', and a fully-qualified domain of LDH
// labels whose last label starts with a letter. Lengths are checked apart.
const EmailAddressPattern = "^" + atextClass + "+([.]" + atextClass + "+)*@([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?[.])+[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?$"

// DKIMSelectorPattern is the syntax of a DKIMSelector: lowercase DNS labels
// separated by dots (RFC 6376 section 3.1: selector = sub-domain *("."
// sub-domain)), such as s2024 or eu.s2024.
const DKIMSelectorPattern = `^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$`

// ObjectNamePattern is the syntax of a reference to a Secret or a
// SenderDomain: a lowercase RFC 1123 subdomain, the names the API server
// gives these kinds.
const ObjectNamePattern = `^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`

var (
	emailAddress = regexp.MustCompile(EmailAddressPattern)
	dkimSelector = regexp.MustCompile(DKIMSelectorPattern)
)

// IsEmailAddress reports whether s is a valid EmailAddress, as the schema
// judges it.
func IsEmailAddress(s string) bool {
	at := strings.LastIndexByte(s, '@')
	return len(s) <= 254 && at >= 1 && at <= 64 && emailAddress.MatchString(s)
}

// IsDKIMSelector reports whether s is a valid DKIMSelector.
func IsDKIMSelector(s string) bool {
	return len(s) <= MaxDKIMSelectorLength && dkimSelector.MatchString(s)
}

// MaxDKIMSelectorLength leaves room in a DNS name of 253 characters for
// "._domainkey." and the shortest domain, a.b.
const MaxDKIMSelectorLength = 253 - len("._domainkey.") - len("a.b")

// The address ranges no packet can be sent from (the schema's rule for
// sourceIP lists the same): "this network" (RFC 791, RFC 1122 section
// 3.2.1.3: a source only while a host learns its address), multicast (RFC
// 1112 and RFC 4291 section 2.7: a destination only), and 240.0.0.0/4, the
// reserved block that holds the limited broadcast 255.255.255.255 (RFC 1112
// section 4, RFC 919). The unspecified addresses 0.0.0.0 and :: fall in
// them or are checked apart.
var unusableSources = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
	netip.MustParsePrefix("ff00::/8"),
}

// IsSourceAddress reports whether a is an address mail can be sent from:
// not unspecified, multicast, broadcast or reserved, and not IPv4-mapped
// (the IPv4 address is written as such).
func IsSourceAddress(a netip.Addr) bool {
	if !a.IsValid() || a.IsUnspecified() || a.Is4In6() || a.Zone() != "" {
		return false
	}
	for _, p := range unusableSources {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// CheckWebhookURL reports what is wrong with a NotificationWebhook URL, as
// the schema's rules judge it, or nil.
func CheckWebhookURL(s string) error {
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return errors.New("must not contain spaces or control characters")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Opaque != "" {
		return errors.New("must be an absolute http(s) URL")
	}
	if u.User != nil {
		return errors.New("must not contain credentials (user:password@)")
	}
	host := u.Hostname()
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" || a.Is4In6() {
			return errors.New("must have a host that is a DNS name or an IP address")
		}
	} else if !hostName.MatchString(host) {
		return errors.New("must have a host that is a DNS name or an IP address")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return errors.New("must have a port from 1 to 65535")
		}
	}
	if u.Scheme == "http" && host != "localhost" && !isLoopbackAddr(host) {
		return errors.New("must use https; http is allowed only for a loopback host")
	}
	return nil
}

// hostName is a DNS name whose last label starts with a letter, so that
// 127.999.999.999 is neither an address nor a name.
var hostName = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?[.])*[A-Za-z]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?[.]?$`)

func isLoopbackAddr(host string) bool {
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
