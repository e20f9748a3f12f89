package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/postgate/postgate/internal/smoke"
)

const smokeUsage = `Usage: postgate smoke --smtp-address HOST:PORT [--relay-metrics-url URL]... [flags]

Checks an installed postgate, as the chart's helm test does: the relay
answers SMTP at --smtp-address (the 220 greeting, then a 250 reply to
EHLO), and each relay whose metrics URL is given has a routing table from
the operator in force. Exits 0 when every check passes, 1 when one fails.

Flags:
`

// urlList is a repeatable flag.
type urlList []string

func (u *urlList) String() string     { return strings.Join(*u, ",") }
func (u *urlList) Set(v string) error { *u = append(*u, v); return nil }

func runSmoke(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("smoke", smokeUsage, stderr)
	addr := fs.String("smtp-address", "", "host:port of the relay's SMTP Service")
	helo := fs.String("helo", "postgate-smoke.invalid", "the name sent with EHLO")
	var metrics urlList
	fs.Var(&metrics, "relay-metrics-url", "a relay's /metrics URL, whose routing table is checked (repeatable)")
	timeout := fs.Duration("timeout", smoke.DefaultTimeout, "how long each check may take")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *addr == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	failed := false
	check := func(what string, f func(ctx context.Context) (string, error)) {
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		if ok, err := f(ctx); err != nil {
			failed = true
			fmt.Fprintf(stderr, "FAIL %s: %v\n", what, err)
		} else {
			fmt.Fprintf(stdout, "ok   %s: %s\n", what, ok)
		}
	}
	check("SMTP "+*addr, func(ctx context.Context) (string, error) {
		greeting, ehlo, err := smoke.SMTP(ctx, *addr, *helo)
		first, _, _ := strings.Cut(ehlo, "\n")
		return fmt.Sprintf("220 %s; EHLO 250 %s", greeting, first), err
	})
	client := &http.Client{Timeout: *timeout}
	for _, u := range metrics {
		check("routing table "+u, func(ctx context.Context) (string, error) {
			v, err := smoke.Table(ctx, client, u)
			return fmt.Sprintf("version %d", v), err
		})
	}
	if failed {
		return 1
	}
	return 0
}
