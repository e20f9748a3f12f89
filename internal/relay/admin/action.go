package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
)

// Action is one action of `postgate queue`: its verb, the message IDs it
// names, and its flags.
type Action struct {
	Verb   string // list, show, flush, hold, release, delete, tls-reports or sites
	IDs    []string
	List   ListQuery // list's selection; its Domain is tls-reports' too
	Bounce bool      // delete: tell the sender
	// Day and Send are tls-reports': the UTC day (YYYY-MM-DD, today or
	// yesterday; "" is today), and sending its reports now.
	Day  string
	Send bool
}

// ErrUnknownAction is Check's error for a verb that is no action.
var ErrUnknownAction = errors.New("unknown action")

// BindFlags binds the flags of the actions to fs.
func (a *Action) BindFlags(fs *flag.FlagSet) {
	a.List.BindFlags(fs)
	fs.BoolVar(&a.Bounce, "bounce", false, "delete: send the sender a bounce for the recipients still pending")
	fs.StringVar(&a.Day, "day", "", "tls-reports: the UTC day, YYYY-MM-DD, today or yesterday (default today)")
	fs.BoolVar(&a.Send, "send", false, "tls-reports: send the day's reports (--domain: that domain's) now, without the random delay; needs --day")
}

// Check reports whether the verb is an action and the IDs fit it.
func (a *Action) Check() error {
	switch a.Verb {
	case "list", "sites":
		if len(a.IDs) > 0 {
			return fmt.Errorf("unexpected arguments %q", a.IDs)
		}
	case "flush":
	case "tls-reports":
		if len(a.IDs) > 0 {
			return fmt.Errorf("unexpected arguments %q", a.IDs)
		}
		if a.Send && a.Day == "" {
			return errors.New("--send needs --day (YYYY-MM-DD, today or yesterday): a report sent on its own day is partial")
		}
	case "show", "hold", "release", "delete":
		if len(a.IDs) == 0 || (a.Verb == "show" && len(a.IDs) > 1) {
			return errors.New("give a message ID")
		}
	default:
		return fmt.Errorf("%w %q", ErrUnknownAction, a.Verb)
	}
	return nil
}

// Run does the action through c and writes what `postgate queue` prints
// to w. Hold, release and delete go on past a message that fails: their
// errors come back joined.
func (a *Action) Run(ctx context.Context, c *Client, w io.Writer) error {
	switch a.Verb {
	case "list":
		resp, err := c.List(ctx, a.List)
		if err != nil {
			return err
		}
		WriteList(w, resp)
	case "show":
		m, err := c.Show(ctx, a.IDs[0])
		if err != nil {
			return err
		}
		WriteMessage(w, m)
	case "flush":
		n, err := c.Flush(ctx, a.IDs)
		if err != nil {
			return err
		}
		fmt.Fprintf(w, "%d messages flushed\n", n)
	case "tls-reports":
		return a.tlsReports(ctx, c, w)
	case "sites":
		resp, err := c.Sites(ctx)
		if err != nil {
			return err
		}
		WriteSites(w, resp)
	default:
		act, done := c.Hold, "held"
		switch a.Verb {
		case "release":
			act, done = c.Release, "released"
		case "delete":
			act = func(ctx context.Context, id string) error { return c.Delete(ctx, id, a.Bounce) }
			done = "deleted"
		}
		var errs []error
		for _, id := range a.IDs {
			if err := act(ctx, id); err != nil {
				errs = append(errs, err)
				continue
			}
			fmt.Fprintf(w, "%s: %s\n", id, done)
		}
		return errors.Join(errs...)
	}
	return nil
}

// tlsReports is the tls-reports action: the day's table, one domain's
// report JSON, or the table after sending.
func (a *Action) tlsReports(ctx context.Context, c *Client, w io.Writer) error {
	switch {
	case a.Send:
		st, err := c.SendTLSReports(ctx, a.Day, a.List.Domain)
		if err != nil {
			return err
		}
		WriteTLSReports(w, st)
	case a.List.Domain != "":
		resp, err := c.TLSReport(ctx, a.Day, a.List.Domain)
		if err != nil {
			return err
		}
		var out bytes.Buffer
		if err := json.Indent(&out, resp.Report, "", "  "); err != nil {
			return err
		}
		out.WriteByte('\n')
		_, err = w.Write(out.Bytes())
		return err
	default:
		st, err := c.TLSReports(ctx, a.Day)
		if err != nil {
			return err
		}
		WriteTLSReports(w, st)
	}
	return nil
}
