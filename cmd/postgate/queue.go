package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/postgate/postgate/internal/relay/admin"
)

const queueUsage = `Usage: postgate queue <list|show|flush|hold|release|delete> [flags] [ID...]

Inspects and acts on the queue of a running relay through its admin API
(postgate relay --admin-bind-address, loopback by default: run it on the
relay's host, or through kubectl port-forward).

  list [--sender S] [--domain D] [--older DUR] [--limit N] [--after ID]
                   messages in arrival order, as a table
  show ID          one message: envelope, each recipient's state, attempts, last reply
  flush [ID...]    retry now the named messages, every message when none is named
  hold ID...       keep messages from delivery until released
  release ID...    end a hold
  delete [--bounce] ID...
                   delete messages: silently, or with --bounce, telling the
                   sender (a DSN from <>) that the pending recipients failed

Flags:
`

func runQueue(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("queue", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, queueUsage); fs.PrintDefaults() }
	addr := fs.String("admin-address", "127.0.0.1:8025", "host:port (or URL) of the relay's admin API")
	timeout := fs.Duration("timeout", 30*time.Second, "how long one request may take")
	sender := fs.String("sender", "", "list: messages whose sender contains this")
	domain := fs.String("domain", "", "list: messages with a recipient in this domain")
	older := fs.Duration("older", 0, "list: messages that arrived longer ago than this")
	limit := fs.Int("limit", admin.DefaultLimit, "list: at most this many messages")
	after := fs.String("after", "", "list: messages after this ID (the next page)")
	bounce := fs.Bool("bounce", false, "delete: send the sender a bounce for the recipients still pending")
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	verb := args[0]
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	ids := fs.Args()
	switch verb {
	case "list":
		if len(ids) > 0 {
			fmt.Fprintf(stderr, "postgate queue list: unexpected arguments %q\n", ids)
			return 2
		}
	case "flush":
	case "show", "hold", "release", "delete":
		if len(ids) == 0 || (verb == "show" && len(ids) > 1) {
			fmt.Fprintf(stderr, "postgate queue %s: give a message ID\n", verb)
			return 2
		}
	default:
		fmt.Fprintf(stderr, "postgate queue: unknown action %q\n\n", verb)
		fs.Usage()
		return 2
	}
	c := admin.NewClient(*addr, *timeout)
	ctx := context.Background()
	fail := func(err error) int {
		fmt.Fprintf(stderr, "postgate queue %s: %v\n", verb, err)
		return 1
	}
	switch verb {
	case "list":
		resp, err := c.List(ctx, admin.ListQuery{Sender: *sender, Domain: *domain, Older: *older, Limit: *limit, After: *after})
		if err != nil {
			return fail(err)
		}
		admin.WriteList(stdout, resp)
	case "show":
		m, err := c.Show(ctx, ids[0])
		if err != nil {
			return fail(err)
		}
		admin.WriteMessage(stdout, m)
	case "flush":
		n, err := c.Flush(ctx, ids)
		if err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "%d messages flushed\n", n)
	default:
		act, done := c.Hold, "held"
		switch verb {
		case "release":
			act, done = c.Release, "released"
		case "delete":
			act = func(ctx context.Context, id string) error { return c.Delete(ctx, id, *bounce) }
			done = "deleted"
		}
		code := 0
		for _, id := range ids {
			if err := act(ctx, id); err != nil {
				code = fail(err)
				continue
			}
			fmt.Fprintf(stdout, "%s: %s\n", id, done)
		}
		return code
	}
	return 0
}
