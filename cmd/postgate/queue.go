package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/postgate/postgate/internal/relay/admin"
)

const queueUsage = `Usage: postgate queue <list|show|flush|hold|release|delete|tls-reports|sites> [flags] [ID...]

Inspects and acts on the queue of a running relay through its admin API
(postgate relay --admin-bind-address, loopback by default: run it on the
relay's host, or through kubectl port-forward).

  list [--sender S] [--domain D] [--site X] [--older DUR] [--limit N] [--after ID]
                   messages in arrival order, as a table; --site: those with a
                   pending recipient whose domain resolved to traffic shaping
                   site X (as sites names it)
  show ID          one message: envelope, each recipient's state, attempts, last reply
  flush [ID...]    retry now the named messages, every message when none is named
  hold ID...       keep messages from delivery until released
  release ID...    end a hold
  delete [--bounce] ID...
                   delete messages: silently, or with --bounce, telling the
                   sender (a DSN from <>) that the pending recipients failed
  tls-reports [--day D] [--domain X]
                   the TLS reports (RFC 8460) of UTC day D (YYYY-MM-DD, today,
                   yesterday; default today): per recipient domain the
                   successful and failed sessions and whether the report went
                   out; with --domain, that domain's report JSON as it would
                   be sent
  tls-reports --send --day D [--domain X]
                   send day D's reports (or X's) now instead of after the day
                   plus a random delay of up to 4 h; never twice; a failure is
                   retried by the relay; today's report is partial (it covers
                   the day until now, later sessions of the day go unreported)
  sites            traffic shaping (postgate relay --shaping) per site: rule,
                   limits in force on this relay, open connections, counts of
                   connections, messages, refusals and deferrals without
                   attempt, the queued messages/recipients that wait for it,
                   and the suspension under way

Flags:
`

func runQueue(args []string, stdout, stderr io.Writer) int {
	fs := flagSet("queue", queueUsage, stderr)
	addr := fs.String("admin-address", "127.0.0.1:8025", "host:port (or URL) of the relay's admin API")
	timeout := fs.Duration("timeout", 30*time.Second, "how long one request may take")
	var a admin.Action
	a.BindFlags(fs)
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	a.Verb = args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	a.IDs = fs.Args()
	if err := a.Check(); errors.Is(err, admin.ErrUnknownAction) {
		fmt.Fprintf(stderr, "postgate queue: unknown action %q\n\n", a.Verb)
		fs.Usage()
		return 2
	} else if err != nil {
		fmt.Fprintf(stderr, "postgate queue %s: %v\n", a.Verb, err)
		return 2
	}
	if err := a.Run(context.Background(), admin.NewClient(*addr, *timeout), stdout); err != nil {
		for _, e := range flattenErrors(err) {
			fmt.Fprintf(stderr, "postgate queue %s: %v\n", a.Verb, e)
		}
		return 1
	}
	return 0
}

// flattenErrors undoes errors.Join, so each error prints on its own line.
func flattenErrors(err error) []error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		return joined.Unwrap()
	}
	return []error{err}
}
