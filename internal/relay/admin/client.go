package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
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
