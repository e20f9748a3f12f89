package mtasts

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
)

// newClient returns the HTTP client of policy fetches (RFC 8461 section
// 3.3): the policy host's addresses come from LookupHost (the relay's own
// resolver), its certificate must be PKIX-valid for mta-sts.<domain>
// against RootCAs, redirects are not followed, no proxy from the
// environment is used, and no connection is kept: a domain is fetched at
// most once per id and RetryAfter, so there is nothing to reuse.
func newClient(opts Options) *http.Client {
	dialer := &net.Dialer{}
	transport := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			addrs, err := opts.LookupHost(ctx, host)
			if err != nil {
				return nil, fmt.Errorf("looking up %s: %w", host, err)
			}
			if len(addrs) == 0 {
				return nil, fmt.Errorf("%s has no address", host)
			}
			var errs []error
			for _, a := range addrs {
				if opts.AllowAddr != nil && !opts.AllowAddr(a.Unmap()) {
					errs = append(errs, fmt.Errorf("%s is at %s, an address policy fetches may not reach (not public; --webhook-allow-cidrs opens internal networks)", host, a.Unmap()))
					continue
				}
				conn, err := dialer.DialContext(ctx, "tcp", netip.AddrPortFrom(a.Unmap(), uint16(opts.Port)).String()) //nolint:gosec // Port is checked to be 0..65535 by New
				if err == nil {
					return conn, nil
				}
				errs = append(errs, err)
				if ctx.Err() != nil {
					break
				}
			}
			return nil, errors.Join(errs...)
		},
		TLSClientConfig:        &tls.Config{RootCAs: opts.RootCAs, MinVersion: tls.VersionTLS12},
		DisableKeepAlives:      true,
		MaxResponseHeaderBytes: 16 << 10,
	}
	return &http.Client{
		Transport: transport,
		// Section 3.3: "HTTP 3xx redirects MUST NOT be followed"; the 3xx
		// response itself comes back and is refused as any status but 200.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// fetch gets and parses https://mta-sts.<domain>/.well-known/mta-sts.txt
// within ctx (section 3.3): HTTP 200 only, media type text/plain, at most
// MaxBody bytes.
func (c *Cache) fetch(ctx context.Context, domain string) (*Policy, *Error) {
	target := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	if c.opts.Port != DefaultPort {
		target = "https://mta-sts." + domain + ":" + strconv.Itoa(c.opts.Port) + "/.well-known/mta-sts.txt"
	}
	fail := func(result, format string, args ...any) (*Policy, *Error) {
		return nil, &Error{Result: result, Reason: target + ": " + fmt.Sprintf(format, args...)}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fail(ResultFetchError, "%v", err)
	}
	req.Header.Set("User-Agent", "postgate (MTA-STS)")
	resp, err := c.client.Do(req)
	if err != nil {
		if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
			return fail(ResultWebPKIInvalid, "the certificate is not valid for mta-sts.%s: %v", domain, unwrapURL(err))
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fail(ResultFetchError, "no answer within %v", c.opts.Timeout)
		}
		return fail(ResultFetchError, "%v", unwrapURL(err))
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		if loc := resp.Header.Get("Location"); loc != "" && resp.StatusCode/100 == 3 {
			return fail(ResultFetchError, "HTTP %d to %s: redirects are not followed (RFC 8461 section 3.3)", resp.StatusCode, loc)
		}
		return fail(ResultFetchError, "HTTP %d, not 200", resp.StatusCode)
	}
	if resp.ContentLength > c.opts.MaxBody {
		return fail(ResultFetchError, "the policy is %d bytes, over the limit of %d", resp.ContentLength, c.opts.MaxBody)
	}
	// Section 3.3: senders SHOULD check the media type, against hosts where
	// users can publish files of other types.
	ct := resp.Header.Get("Content-Type")
	if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "text/plain" {
		return fail(ResultInvalid, "the media type is %q, not text/plain (RFC 8461 section 3.3)", ct)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.opts.MaxBody+1))
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fail(ResultFetchError, "no complete policy within %v", c.opts.Timeout)
	}
	if err != nil {
		return fail(ResultFetchError, "reading the policy: %v", err)
	}
	if int64(len(body)) > c.opts.MaxBody {
		return fail(ResultFetchError, "the policy is over the limit of %d bytes", c.opts.MaxBody)
	}
	p, err := ParsePolicy(string(body))
	if err != nil {
		return fail(ResultInvalid, "%v (RFC 8461 section 3.2)", err)
	}
	return p, nil
}

// unwrapURL drops the "Get <url>:" prefix of the client's errors: the
// reason already starts with the URL.
func unwrapURL(err error) error {
	if u, ok := errors.AsType[*url.Error](err); ok {
		return u.Err
	}
	return err
}
