package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/lifecycle"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
)

// Client talks to a relay's admin API: `postgate queue` and `postgate
// relay drain`.
type Client struct {
	base string
	http *http.Client
}

// NewClient talks to the admin API at addr, host:port or a URL, each
// request bounded by timeout.
func NewClient(addr string, timeout time.Duration) *Client {
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	return &Client{base: strings.TrimSuffix(addr, "/"), http: &http.Client{Timeout: timeout}}
}

// Do sends body (none when nil) as JSON to path and decodes the answer
// into out (ignored when nil). An answer other than 200 is an error,
// with the API's own message when it gave one.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd) //nolint:gosec // the user names the relay to talk to

	if err != nil {
		return err
	}
	resp, err := c.http.Do(req) //nolint:gosec // the user names the relay to talk to
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			// The usual first mistake: no relay there, or its admin API
			// elsewhere. Say what to check rather than only the URL.
			return fmt.Errorf("no relay admin API at %s (%w): is the relay running, and listening there (postgate relay --admin-bind-address)? Point at it with --admin-address, or kubectl port-forward to the relay's port 8025", c.base, op.Err)
		}
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(b, out)
}

// ListQuery selects the messages of a List; zero fields select everything.
type ListQuery struct {
	Sender string // the sender contains this
	Domain string // a recipient is in this domain
	Site   string // a pending recipient's domain resolved to this traffic shaping site
	Older  time.Duration
	Limit  int
	After  string // the ID after which the page starts
}

// List returns one page of queued messages in arrival order.
func (c *Client) List(ctx context.Context, q ListQuery) (*ListResponse, error) {
	v := url.Values{}
	for k, s := range map[string]string{"sender": q.Sender, "domain": q.Domain, "site": q.Site, "after": q.After} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.Older > 0 {
		v.Set("older", q.Older.String())
	}
	v.Set("limit", strconv.Itoa(q.Limit))
	var resp ListResponse
	if err := c.Do(ctx, http.MethodGet, "/v1/messages?"+v.Encode(), nil, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// Show returns one queued message.
func (c *Client) Show(ctx context.Context, id string) (*Message, error) {
	var m Message
	if err := c.Do(ctx, http.MethodGet, "/v1/messages/"+url.PathEscape(id), nil, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// Flush makes the named messages due now, every message when ids is
// empty, and returns how many were.
func (c *Client) Flush(ctx context.Context, ids []string) (int, error) {
	var resp FlushResponse
	if err := c.Do(ctx, http.MethodPost, "/v1/flush", FlushRequest{IDs: ids}, &resp); err != nil {
		return 0, err
	}
	return resp.Flushed, nil
}

// Hold keeps a message from delivery until it is released.
func (c *Client) Hold(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodPost, "/v1/messages/"+url.PathEscape(id)+"/hold", nil, nil)
}

// Release ends a hold.
func (c *Client) Release(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodPost, "/v1/messages/"+url.PathEscape(id)+"/release", nil, nil)
}

// Delete deletes a message: silently, or with bounce, telling the sender
// that the recipients still pending failed.
func (c *Client) Delete(ctx context.Context, id string, bounce bool) error {
	suffix := ""
	if bounce {
		suffix = "?bounce=true"
	}
	return c.Do(ctx, http.MethodDelete, "/v1/messages/"+url.PathEscape(id)+suffix, nil, nil)
}

// Drain starts the relay's on-demand drain (served by its lifecycle) and
// polls it every interval until the hand-off is done. When ctx ends first
// it returns context.Cause(ctx).
func (c *Client) Drain(ctx context.Context, interval time.Duration) (*lifecycle.DrainStatus, error) {
	var st lifecycle.DrainStatus
	err := c.Do(ctx, http.MethodPost, "/v1/drain", nil, &st)
	for err == nil && !st.Done {
		select {
		case <-ctx.Done():
			err = context.Cause(ctx)
		case <-time.After(interval):
			err = c.Do(ctx, http.MethodGet, "/v1/drain", nil, &st)
		}
	}
	return &st, err
}

// tlsReportQuery is the query of the TLS report endpoints.
func tlsReportQuery(day, domain string) string {
	v := url.Values{}
	if day != "" {
		v.Set("day", day)
	}
	if domain != "" {
		v.Set("domain", domain)
	}
	return v.Encode()
}

// TLSReports returns the state of the TLS reports of a UTC day
// (YYYY-MM-DD, today or yesterday; "" is today).
func (c *Client) TLSReports(ctx context.Context, day string) (*tlsrpt.DayStatus, error) {
	var st tlsrpt.DayStatus
	if err := c.Do(ctx, http.MethodGet, "/v1/tls-reports?"+tlsReportQuery(day, ""), nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// TLSReport returns one domain's TLS report of a day as it would be sent.
func (c *Client) TLSReport(ctx context.Context, day, domain string) (*TLSReportResponse, error) {
	var resp TLSReportResponse
	if err := c.Do(ctx, http.MethodGet, "/v1/tls-reports?"+tlsReportQuery(day, domain), nil, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// SendTLSReports sends a day's TLS reports now, domain's alone when it is
// not "", and returns their state afterwards.
func (c *Client) SendTLSReports(ctx context.Context, day, domain string) (*tlsrpt.DayStatus, error) {
	var st tlsrpt.DayStatus
	if err := c.Do(ctx, http.MethodPost, "/v1/tls-reports/send?"+tlsReportQuery(day, domain), nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Sites returns the traffic shaping state per site and the queued mail
// that waits for each.
func (c *Client) Sites(ctx context.Context) (*SitesResponse, error) {
	var resp SitesResponse
	if err := c.Do(ctx, http.MethodGet, "/v1/sites", nil, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}

// BindFlags binds q to fs under the list flags of `postgate queue`.
func (q *ListQuery) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&q.Sender, "sender", "", "list: messages whose sender contains this")
	fs.StringVar(&q.Domain, "domain", "", "list: messages with a recipient in this domain; tls-reports: that policy domain's report")
	fs.StringVar(&q.Site, "site", "", "list: messages with a pending recipient whose domain resolved to this traffic shaping site (see sites)")
	fs.DurationVar(&q.Older, "older", 0, "list: messages that arrived longer ago than this")
	fs.IntVar(&q.Limit, "limit", DefaultLimit, "list: at most this many messages")
	fs.StringVar(&q.After, "after", "", "list: messages after this ID (the next page)")
}
