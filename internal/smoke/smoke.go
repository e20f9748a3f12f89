// Package smoke holds the checks of `postgate smoke`, which the chart's
// `helm test` runs in a pod against an installed release: the relay
// Service answers SMTP, and each relay has a routing table from the
// operator in force.
package smoke

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay"
)

// maxReply bounds what one SMTP check reads: a greeting and an EHLO reply
// are a few hundred bytes (RFC 5321 section 4.5.3.1.5 limits a reply line
// to 512 octets).
const maxReply = 64 << 10

// maxMetrics bounds the metrics page a table check reads.
const maxMetrics = 16 << 20

// SMTP connects to addr and expects the 220 greeting (RFC 5321 section
// 4.2, 3.1) and a 250 reply to EHLO helo (section 4.1.1.1), then says
// QUIT. It returns the greeting and the EHLO reply. The whole exchange
// must end before ctx's deadline.
func SMTP(ctx context.Context, addr, helo string) (greeting, ehlo string, err error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return "", "", fmt.Errorf("connecting to %s: %w", addr, err)
	}
	defer func() { _ = conn.Close() }()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return "", "", err
		}
	}
	r := textproto.NewReader(bufio.NewReader(io.LimitReader(conn, maxReply)))
	w := textproto.NewWriter(bufio.NewWriter(conn))
	if _, greeting, err = r.ReadResponse(220); err != nil {
		return greeting, "", fmt.Errorf("greeting from %s: %w", addr, err)
	}
	if err := w.PrintfLine("EHLO %s", helo); err != nil {
		return greeting, "", fmt.Errorf("sending EHLO to %s: %w", addr, err)
	}
	if _, ehlo, err = r.ReadResponse(250); err != nil {
		return greeting, ehlo, fmt.Errorf("EHLO reply from %s: %w", addr, err)
	}
	// A polite end; its reply changes nothing.
	if w.PrintfLine("QUIT") == nil {
		_, _, _ = r.ReadResponse(221)
	}
	return greeting, ehlo, nil
}

// Table reads a relay's metrics at url and returns the version of the
// routing table it has in force; an error when it has none (it answers
// 451 to mail then): a relay gets its table only from the operator's
// publication (docs/design.md contract 1), so a version proves both.
func Table(ctx context.Context, client *http.Client, url string) (version int64, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var loaded, found bool
	sc := bufio.NewScanner(io.LimitReader(resp.Body, maxMetrics))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case relay.MetricTableLoaded:
			loaded = v == 1
		case relay.MetricTableVersion:
			version, found = int64(v), true
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("reading %s: %w", url, err)
	}
	switch {
	case !found:
		return 0, fmt.Errorf("%s has no %s: not a postgate relay's metrics", url, relay.MetricTableVersion)
	case !loaded || version == 0:
		return 0, errors.New("no routing table loaded: the operator has not published one, or the relay cannot read it")
	}
	return version, nil
}

// DefaultTimeout is how long each check may take.
const DefaultTimeout = 30 * time.Second

// Options are the settings of `postgate smoke`.
type Options struct {
	// SMTPAddress is host:port of the relay's SMTP Service.
	SMTPAddress string
	// HELO is the name sent with EHLO.
	HELO string
	// MetricsURLs are relays' /metrics URLs whose routing table is checked.
	MetricsURLs urlList
	// Timeout bounds each check.
	Timeout time.Duration
}

// urlList is a repeatable flag.
type urlList []string

func (u *urlList) String() string     { return strings.Join(*u, ",") }
func (u *urlList) Set(v string) error { *u = append(*u, v); return nil }

// BindFlags binds the options to fs, with their defaults.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.SMTPAddress, "smtp-address", "", "host:port of the relay's SMTP Service")
	fs.StringVar(&o.HELO, "helo", "postgate-smoke.invalid", "the name sent with EHLO")
	fs.Var(&o.MetricsURLs, "relay-metrics-url", "a relay's /metrics URL, whose routing table is checked (repeatable)")
	fs.DurationVar(&o.Timeout, "timeout", DefaultTimeout, "how long each check may take")
}

// Run runs every check, each within Timeout, and prints one line per check:
// "ok" lines to stdout, "FAIL" lines to stderr. It reports whether all
// passed.
func (o *Options) Run(ctx context.Context, stdout, stderr io.Writer) bool {
	passed := true
	check := func(what string, f func(ctx context.Context) (string, error)) {
		ctx, cancel := context.WithTimeout(ctx, o.Timeout)
		defer cancel()
		if ok, err := f(ctx); err != nil {
			passed = false
			fmt.Fprintf(stderr, "FAIL %s: %v\n", what, err)
		} else {
			fmt.Fprintf(stdout, "ok   %s: %s\n", what, ok)
		}
	}
	check("SMTP "+o.SMTPAddress, func(ctx context.Context) (string, error) {
		greeting, ehlo, err := SMTP(ctx, o.SMTPAddress, o.HELO)
		first, _, _ := strings.Cut(ehlo, "\n")
		return fmt.Sprintf("220 %s; EHLO 250 %s", greeting, first), err
	})
	client := &http.Client{Timeout: o.Timeout}
	for _, u := range o.MetricsURLs {
		check("routing table "+u, func(ctx context.Context) (string, error) {
			v, err := Table(ctx, client, u)
			return fmt.Sprintf("version %d", v), err
		})
	}
	return passed
}
