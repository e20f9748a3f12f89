package smtpd

import (
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-smtp"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// checkAddress refuses envelope addresses that could route mail somewhere
// other than where they appear to, whoever the client is: '%' and '!'
// routing in the local part (the "percent hack" and UUCP paths), several '@'
// or a quoted local part that hides one, address literals, and anything that
// is not local@domain. What passes is queued and sent byte for byte.
//
// go-smtp has already parsed the path: it drops a source route
// ("@hop1,@hop2:user@domain"), as RFC 5321 section 4.1.1.3 and appendix C
// tell servers to, so the route is never followed; and it unquotes a quoted
// local part, so one that hides '@', '%' or '!' arrives with it visible and
// is refused here, while "alice"@example.com arrives as its equivalent
// alice@example.com.
func checkAddress(addr string) error {
	if addr == "" {
		return errors.New("empty address")
	}
	if len(addr) > 254 {
		return errors.New("address longer than 254 characters")
	}
	if addr[0] == '@' || strings.Contains(addr, ":") {
		return errors.New("source routes are not accepted")
	}
	if !utf8.ValidString(addr) {
		// RFC 6531 section 3.3: UTF-8 addresses must be valid UTF-8.
		return errors.New("the address is not valid UTF-8")
	}
	for _, r := range addr {
		if r < 0x21 || r == 0x7f {
			return errors.New("control or space characters in the address")
		}
	}
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || at == len(addr)-1 {
		return errors.New("the address must be local-part@domain")
	}
	local, domain := addr[:at], addr[at+1:]
	if strings.Contains(local, `"`) || strings.Contains(local, `\`) {
		// A quoted local part can hide '@', '%' or '!' from the checks
		// below; no legitimate sender of a relay needs one.
		return errors.New("quoted local parts are not accepted")
	}
	if strings.ContainsAny(local, "@%!") {
		return errors.New("'@', '%' and '!' routing in the local part is not accepted")
	}
	if len(local) > 64 {
		return errors.New("local part longer than 64 characters")
	}
	if strings.HasPrefix(local, ".") || strings.HasSuffix(local, ".") || strings.Contains(local, "..") || !dotAtomText(local) {
		return errors.New("the local part is not a dot-atom")
	}
	if strings.HasPrefix(domain, "[") {
		return errors.New("address literals are not accepted")
	}
	if !validDomain(domain) {
		return errors.New("the domain is not a valid host name")
	}
	return nil
}

// validDomain accepts LDH labels (and UTF-8 for SMTPUTF8 clients), at least
// two of them, without empty labels.
func validDomain(d string) bool {
	d = strings.TrimSuffix(d, ".")
	if len(d) == 0 || len(d) > 253 {
		return false
	}
	labels := strings.Split(d, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if r < 0x80 && !(r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
				return false
			}
		}
	}
	return true
}

// dotAtomText reports whether every character of s is atext or '.' (RFC
// 5322 section 3.2.3), or non-ASCII (RFC 6531 for SMTPUTF8 clients): the
// specials ( ) < > [ ] : ; @ \ , " have no place in an unquoted local part.
// The ASCII atext is the schema's (v1alpha1.IsAtext), so that every sender
// address a RelayRoute can name is one the server accepts.
func dotAtomText(s string) bool {
	for _, r := range s {
		if r < 0x80 && r != '.' && !v1alpha1.IsAtext(r) {
			return false
		}
	}
	return true
}

// needsSMTPUTF8 refuses a non-ASCII address in a transaction that was not
// opened with the SMTPUTF8 parameter: 553 5.6.7 (RFC 6531 section 3.3, and
// its enhanced code X.6.7, "non-ASCII addresses not permitted"). An
// internationalized domain in A-label form ("xn--") is ASCII and needs
// nothing.
func needsSMTPUTF8(addr string) error {
	for i := 0; i < len(addr); i++ {
		if addr[i] >= 0x80 {
			return &smtp.SMTPError{Code: 553, EnhancedCode: smtp.EnhancedCode{5, 6, 7},
				Message: "Non-ASCII address <" + addr + "> needs the SMTPUTF8 parameter on MAIL FROM (RFC 6531)"}
		}
	}
	return nil
}
