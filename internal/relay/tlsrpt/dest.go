package tlsrpt

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// recordVersion starts a TLSRPT record (RFC 8460 section 3).
const recordVersion = "v=TLSRPTv1"

// noPolicyError says that a domain asks for no reports: no record, several,
// or one that does not parse. It is final, unlike a failed lookup.
type noPolicyError struct{ reason string }

func (e *noPolicyError) Error() string { return e.reason }

// lookup returns the rua URIs of domain's TLSRPT record.
func (r *Reporter) lookup(ctx context.Context, domain string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.SubmitTimeout)
	defer cancel()
	name := "_smtp._tls." + domain
	txts, err := r.opts.LookupTXT(ctx, name)
	var dnsErr *net.DNSError
	switch {
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return nil, &noPolicyError{reason: "no TXT record at " + name}
	case err != nil:
		return nil, fmt.Errorf("TXT %s: %w", name, err)
	}
	uris, err := ParseRecord(txts)
	if err != nil {
		return nil, &noPolicyError{reason: name + ": " + err.Error()}
	}
	return uris, nil
}

// ParseRecord returns the rua URIs that the relay can use (mailto: and
// https:) from the TXT strings at _smtp._tls.<domain> (RFC 8460 section 3):
// the strings that do not start with v=TLSRPTv1 are ignored, and exactly
// one must remain; fields are separated by ";", rua holds URIs separated by
// ",", both with optional white space around; unknown fields and URI schemes
// are ignored. The mailto: URIs come back as "mailto:" and the bare
// address.
func ParseRecord(txts []string) ([]string, error) {
	var recs []string
	for _, t := range txts {
		rest, ok := strings.CutPrefix(t, recordVersion)
		if rest = strings.TrimLeft(rest, " \t"); ok && (rest == "" || rest[0] == ';') {
			recs = append(recs, t)
		}
	}
	if len(recs) != 1 {
		return nil, fmt.Errorf("%d TXT records start with %s, not 1", len(recs), recordVersion)
	}
	var uris []string
	var rua bool
	for i, field := range strings.Split(recs[0], ";") {
		field = strings.Trim(field, " \t")
		if i == 0 || field == "" {
			continue
		}
		name, value, ok := strings.Cut(field, "=")
		if !ok {
			return nil, fmt.Errorf("field %q is not name=value", field)
		}
		if name != "rua" {
			continue // an extension (section 3: ignored)
		}
		rua = true
		for _, raw := range strings.Split(value, ",") {
			u, err := parseURI(strings.Trim(raw, " \t"))
			if err != nil {
				return nil, err
			}
			if u != "" && !slices.Contains(uris, u) {
				uris = append(uris, u)
			}
		}
	}
	switch {
	case !rua:
		return nil, errors.New("the record has no rua field")
	case len(uris) == 0:
		return nil, errors.New("the rua field has no mailto: or https: URI")
	}
	return uris, nil
}

// parseURI checks one rua URI: "" for a scheme the relay does not send to.
func parseURI(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("rua URI %q: %w", raw, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "mailto":
		to, err := url.PathUnescape(u.Opaque)
		if err != nil || to == "" {
			return "", fmt.Errorf("rua URI %q has no address", raw)
		}
		addr, err := mail.ParseAddress(to)
		if err != nil {
			return "", fmt.Errorf("rua URI %q: %w", raw, err)
		}
		return "mailto:" + addr.Address, nil
	case "https":
		if u.Host == "" || u.User != nil {
			return "", fmt.Errorf("rua URI %q: an https: URI needs a host and no user", raw)
		}
		u.Scheme = "https"
		return u.String(), nil
	}
	return "", nil
}

// post sends the gzip report to an https: URI (section 5.4).
func (r *Reporter) post(ctx context.Context, uri string, gz []byte) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.HTTPTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, uri, bytes.NewReader(gz))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/tlsrpt+gzip")
	client := &http.Client{
		Transport: &http.Transport{
			DialContext:       r.dial,
			TLSClientConfig:   &tls.Config{RootCAs: r.opts.RootCAs, MinVersion: tls.VersionTLS12},
			DisableKeepAlives: true, // one POST a day: nothing to keep
		},
		// Section 5.4: a redirect is not a success, and is not followed.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("HTTP status %s", resp.Status)
	}
	return nil
}

// dial connects to one of the allowed addresses of addr's host.
func (r *Reporter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portText, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q: %w", portText, err)
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = append(ips, ip)
	} else {
		if ips, err = r.opts.LookupHost(ctx, host); err != nil {
			return nil, err
		}
	}
	var d net.Dialer
	var errs []error
	for _, ip := range ips {
		if !r.opts.AllowAddr(ip) {
			errs = append(errs, fmt.Errorf("%s: reports do not go to loopback, private or link-local addresses", ip))
			continue
		}
		c, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip.Unmap(), uint16(port)).String())
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, fmt.Errorf("%s has no address", host)
	}
	return nil, errors.Join(errs...)
}
