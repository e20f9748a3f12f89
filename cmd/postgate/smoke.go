package main

import (
	"context"
	"io"

	"github.com/postgate/postgate/internal/smoke"
)

const smokeUsage = `Usage: postgate smoke --smtp-address HOST:PORT [--relay-metrics-url URL]... [flags]

Checks an installed postgate, as the chart's helm test does: the relay
answers SMTP at --smtp-address (the 220 greeting, then a 250 reply to
EHLO), and each relay whose metrics URL is given has a routing table from
the operator in force. Exits 0 when every check passes, 1 when one fails.

Flags:
`

func runSmoke(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("smoke", smokeUsage, stderr)
	var o smoke.Options
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if o.SMTPAddress == "" || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	if !o.Run(context.Background(), stdout, stderr) {
		return 1
	}
	return 0
}
