package admin

import (
	"cmp"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/postgate/postgate/internal/relay/lifecycle"
	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
)

// WriteList writes a page of messages as the table `postgate queue list`
// prints, one message a line, and the flag for the next page when there is
// one.
func WriteList(w io.Writer, resp *ListResponse) {
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
		// The table keeps one line per message; show gives the whole reply.
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

// WriteMessage writes one message as `postgate queue show` prints it: the
// envelope, then a table of its recipients' states.
func WriteMessage(w io.Writer, m *Message) {
	fmt.Fprintf(w, "ID:       %s\nArrival:  %s\nFrom:     <%s>\nSize:     %d\nHeld:     %t\n", m.ID, m.Arrival.UTC().Format(time.RFC3339), m.From, m.Size, m.Held)
	if e := m.Envelope; e.ClientAddr != "" || e.HELO != "" || e.Auth != "" {
		fmt.Fprintf(w, "Client:   %s helo=%s auth=%s\n", e.ClientAddr, e.HELO, e.Auth)
	}
	if dsn := dsnText(&m.Envelope); dsn != "" {
		fmt.Fprintf(w, "DSN:      %s\n", dsn)
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

// dsnText renders the message's DSN parameters (RFC 3461) as the client
// gave them, "" when it gave none: who hears of what happens to it.
func dsnText(e *queue.Envelope) string {
	var parts []string
	if e.Ret != "" {
		parts = append(parts, "RET="+e.Ret)
	}
	if e.EnvID != "" {
		parts = append(parts, "ENVID="+e.EnvID)
	}
	for _, r := range e.To {
		if len(r.Notify) > 0 {
			parts = append(parts, fmt.Sprintf("<%s> NOTIFY=%s", r.Addr, strings.Join(r.Notify, ",")))
		}
	}
	return strings.Join(parts, " ")
}

// WriteDrain writes what `postgate relay drain` prints: how many messages
// moved and how many are left, then each peer's share and the error that
// stopped the hand-off, if any.
func WriteDrain(w io.Writer, st *lifecycle.DrainStatus) {
	fmt.Fprintf(w, "handed off %d, remaining %d\n", st.HandedOff, st.Remaining)
	for peer, n := range st.Peers {
		fmt.Fprintf(w, "  %s: %d\n", peer, n)
	}
	if st.Error != "" {
		fmt.Fprintf(w, "error: %s\n", st.Error)
	}
}

// WriteTLSReports writes what `postgate queue tls-reports` prints: the
// day, whether it is partial and when its reports go out, then one line
// per policy domain: its sessions, its report's state and where it went or
// why not.
func WriteTLSReports(w io.Writer, st *tlsrpt.DayStatus) {
	fmt.Fprintf(w, "Day:      %s UTC", st.Day)
	if st.Partial {
		fmt.Fprint(w, " (not over: counts so far; a report sent now is partial)")
	}
	fmt.Fprintln(w)
	if !st.SendAt.IsZero() {
		fmt.Fprintf(w, "Sending:  from %s\n", st.SendAt.UTC().Format(time.RFC3339))
	}
	if len(st.Domains) == 0 {
		fmt.Fprintln(w, "no TLS sessions counted")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tSUCCESSFUL\tFAILED\tREPORT\tATTEMPTS\tDETAIL")
	for _, d := range st.Domains {
		detail := d.Reason
		switch d.State {
		case tlsrpt.StateSent:
			detail = "to " + strings.Join(d.Sent, ",")
		case tlsrpt.StateRetrying:
			if !d.NextAttempt.IsZero() {
				detail = "next " + d.NextAttempt.UTC().Format(time.RFC3339) + ": " + d.Reason
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\n", d.Domain, d.Successful, d.Failed, d.State, d.Attempts, detail)
	}
	_ = tw.Flush()
}

// WriteSites writes what `postgate queue sites` prints: one line per
// traffic shaping site with its rule, the limits in force on this relay,
// open connections, the counters since the relay started (or last forgot
// the idle site), the queued messages and recipients that wait for it,
// and its suspension; then the queued mail whose site is not known yet.
func WriteSites(w io.Writer, resp *SitesResponse) {
	if len(resp.Sites) == 0 {
		fmt.Fprintln(w, "no sites: nothing delivered by MX since the relay started")
	} else {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SITE\tRULE\tLIMITS\tOPEN\tOPENED\tMESSAGES\tREFUSED\tDEFERRED\tQUEUED MSG/RCPT\tSUSPENDED")
		for _, s := range resp.Sites {
			suspended := "-"
			if !s.SuspendedUntil.IsZero() {
				suspended = "until " + s.SuspendedUntil.UTC().Format(time.RFC3339) + ": " + s.SuspendedReason
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%d/%d\t%s\n", s.Name, cmp.Or(s.Rule, "-"), limitsText(s.Limits),
				s.OpenConnections, s.ConnectionsOpened, s.MessagesGranted, refusedText(s.Refused), s.DeferredWithoutAttempt,
				s.QueuedMessages, s.QueuedRecipients, suspended)
		}
		_ = tw.Flush()
	}
	if resp.UnknownMessages > 0 {
		fmt.Fprintf(w, "site not known yet (domain not resolved since the relay started): %d messages, %d recipients\n",
			resp.UnknownMessages, resp.UnknownRecipients)
	}
}

// limitsText is a site's limits for people; a limit of 0 (none) is left
// out.
func limitsText(l *SiteLimits) string {
	if l == nil {
		return "-"
	}
	var parts []string
	for _, p := range []struct {
		n    int
		unit string
	}{
		{l.MaxConnections, " conns"}, {l.MaxMessagesPerConnection, " msgs/conn"}, {l.MaxMessagesPerMinute, "/min"},
		{l.MaxMessagesPerHour, "/h"}, {l.MaxNewConnectionsPerMinute, " new conns/min"},
	} {
		if p.n > 0 {
			parts = append(parts, fmt.Sprintf("%d%s", p.n, p.unit))
		}
	}
	return strings.Join(parts, ", ")
}

// refusedText is the refusals by reason, "-" when none.
func refusedText(r map[string]uint64) string {
	if len(r) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(r))
	for reason, n := range r {
		parts = append(parts, fmt.Sprintf("%s %d", reason, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, ", ")
}
