package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
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
		v := url.Values{}
		for k, s := range map[string]string{"sender": *sender, "domain": *domain, "after": *after} {
			if s != "" {
				v.Set(k, s)
			}
		}
		if *older > 0 {
			v.Set("older", older.String())
		}
		v.Set("limit", fmt.Sprint(*limit))
		var resp admin.ListResponse
		if err := c.Do(ctx, http.MethodGet, "/v1/messages?"+v.Encode(), nil, &resp); err != nil {
			return fail(err)
		}
		printQueueList(stdout, &resp)
	case "show":
		var m admin.Message
		if err := c.Do(ctx, http.MethodGet, "/v1/messages/"+url.PathEscape(ids[0]), nil, &m); err != nil {
			return fail(err)
		}
		printQueueMessage(stdout, &m)
	case "flush":
		var resp admin.FlushResponse
		if err := c.Do(ctx, http.MethodPost, "/v1/flush", admin.FlushRequest{IDs: ids}, &resp); err != nil {
			return fail(err)
		}
		fmt.Fprintf(stdout, "%d messages flushed\n", resp.Flushed)
	default:
		method, suffix := http.MethodPost, "/"+verb
		if verb == "delete" {
			method, suffix = http.MethodDelete, ""
			if *bounce {
				suffix = "?bounce=true"
			}
		}
		code := 0
		for _, id := range ids {
			if err := c.Do(ctx, method, "/v1/messages/"+url.PathEscape(id)+suffix, nil, nil); err != nil {
				code = fail(err)
				continue
			}
			fmt.Fprintf(stdout, "%s: %s\n", id, map[string]string{"hold": "held", "release": "released", "delete": "deleted"}[verb])
		}
		return code
	}
	return 0
}

func printQueueList(w io.Writer, resp *admin.ListResponse) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tARRIVAL\tSIZE\tHELD\tFROM\tPENDING\tRECIPIENTS\tLAST REPLY")
	for _, m := range resp.Messages {
		pending, last := 0, ""
		rcpts := make([]string, 0, len(m.Recipients))
		for _, r := range m.Recipients {
			rcpts = append(rcpts, r.Addr)
			if r.State == "pending" {
				pending++
			}
			if r.LastReply != "" {
				last = r.LastReply
			}
		}
		if len(last) > 60 {
			last = last[:60] + "..."
		}
		held := "-"
		if m.Held {
			held = "held"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t<%s>\t%d/%d\t%s\t%s\n", m.ID, m.Arrival.UTC().Format(time.RFC3339), m.Size, held,
			m.From, pending, len(m.Recipients), strings.Join(rcpts, ","), last)
	}
	_ = tw.Flush()
	if resp.Next != "" {
		fmt.Fprintf(w, "more: --after %s\n", resp.Next)
	}
}

func printQueueMessage(w io.Writer, m *admin.Message) {
	fmt.Fprintf(w, "ID:       %s\nArrival:  %s\nFrom:     <%s>\nSize:     %d\nHeld:     %t\n", m.ID, m.Arrival.UTC().Format(time.RFC3339), m.From, m.Size, m.Held)
	if e := m.Envelope; e.ClientAddr != "" || e.HELO != "" || e.Auth != "" {
		fmt.Fprintf(w, "Client:   %s helo=%s auth=%s\n", e.ClientAddr, e.HELO, e.Auth)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RECIPIENT\tSTATE\tATTEMPTS\tLAST ATTEMPT\tNEXT ATTEMPT\tLAST REPLY")
	ts := func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, r := range m.Recipients {
		fmt.Fprintf(tw, "<%s>\t%s\t%d\t%s\t%s\t%s\n", r.Addr, r.State, r.Attempts, ts(r.LastAttempt), ts(r.NextAttempt), r.LastReply)
	}
	_ = tw.Flush()
}
