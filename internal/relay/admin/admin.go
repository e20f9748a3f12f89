// Package admin is the relay's queue administration endpoint, a small JSON
// API over HTTP that `postgate queue` talks to: the queue is locked by the
// running relay (flock), so the tools cannot open the spool themselves.
//
// The endpoint can delete mail, so the relay serves it on loopback only
// unless told otherwise (postgate relay --admin-bind-address); it has no
// authentication of its own, a port-forward is the way in from outside.
//
// The API (every answer is JSON; errors are {"error": "..."}):
//
//	GET    /v1/messages?sender=S&domain=D&site=X&older=DUR&after=ID&limit=N
//	       messages in arrival order whose sender contains S, with a recipient
//	       in domain D, with a pending recipient whose domain resolved to the
//	       traffic shaping site X, that arrived more than DUR ago; "next" is
//	       the cursor for the following page ("" at the end)
//	GET    /v1/messages/{id}             one message: envelope, recipients' state
//	POST   /v1/messages/{id}/hold        keep it from delivery until released
//	POST   /v1/messages/{id}/release     end a hold
//	DELETE /v1/messages/{id}             delete it silently (no bounce)
//	DELETE /v1/messages/{id}?bounce=true delete it and bounce its pending recipients to the sender
//	POST   /v1/flush  {"ids": [...]}     retry now the named messages, all when none
//	GET    /v1/tls-reports?day=DAY       the TLS reports (RFC 8460) of a UTC day: each
//	                                     policy domain's session counts and sending state
//	GET    /v1/tls-reports?day=DAY&domain=D
//	                                     that domain's state and its report JSON as it
//	                                     would be sent now
//	POST   /v1/tls-reports/send?day=DAY[&domain=D]
//	                                     send that day's reports (or D's) now, without
//	                                     the random delay; a day not over yet is partial
//	GET    /v1/sites                     traffic shaping per site: rule, limits, counters,
//	                                     suspension, and the queued mail that waits for it
//
// DAY is YYYY-MM-DD, today or yesterday (UTC), today when omitted from a
// GET; a send needs it. The TLS report endpoints answer 404 (GET) and 409
// (POST) when TLS reporting is off; /v1/sites and site= answer 404 and 400
// when traffic shaping is off.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/tlsrpt"
)

// Queue is what the endpoint needs of the relay's queue (*queue.Queue).
type Queue interface {
	Get(ctx context.Context, id queue.ID) (queue.Message, error)
	List(ctx context.Context, after queue.ID, limit int) ([]queue.Message, error)
	Hold(ctx context.Context, id queue.ID) error
	Release(ctx context.Context, id queue.ID) error
	Flush(ctx context.Context, ids ...queue.ID) (int, error)
	Delete(ctx context.Context, id queue.ID) error
}

// Limits of one request.
const (
	// MaxRequestBytes bounds a request body (a flush of many IDs fits).
	MaxRequestBytes = 64 << 10
	// MaxFlushIDs bounds the IDs of one flush.
	MaxFlushIDs = 1000
	// DefaultLimit is the page size of a list without limit=.
	DefaultLimit = 100
	// RequestTimeout bounds the work of one request.
	RequestTimeout = 30 * time.Second
)

// Options configure a Handler.
type Options struct {
	// Now tells the time, for the age filter; time.Now when nil.
	Now func() time.Time
	// Bounce sends the sender a failure notification (DSN) for the
	// recipients at the given indexes of m, which are marked Failed with
	// the reason; the body is still queued while it runs. Nil: a delete
	// with a bounce is refused (501).
	Bounce func(ctx context.Context, m queue.Message, rcpts []int) error
	// TLSReports is the relay's TLS reporter; nil when TLS reporting is
	// off.
	TLSReports TLSReports
	// Sites is the relay's traffic shaping; nil when shaping is off.
	Sites Sites
}

// TLSReports is what the endpoint needs of the relay's TLS reporter
// (*tlsrpt.Reporter).
type TLSReports interface {
	Summary(day time.Time) tlsrpt.DayStatus
	Report(domain string, day time.Time) ([]byte, error)
	Send(ctx context.Context, day time.Time, domain string) (tlsrpt.DayStatus, error)
}

// DeletedReply is the reason a bounce of a deleted message gives.
var DeletedReply = queue.Reply{Enhanced: "5.0.0", Text: "deleted from the queue by the relay's administrator"}

// Handler serves the API over q.
type Handler struct {
	q      Queue
	now    func() time.Time
	bounce func(ctx context.Context, m queue.Message, rcpts []int) error
	tlsrpt TLSReports
	sites  Sites
	mux    *http.ServeMux
}

// New returns the handler of the admin API over q.
func New(q Queue, opts Options) *Handler {
	h := &Handler{q: q, now: opts.Now, bounce: opts.Bounce, tlsrpt: opts.TLSReports, sites: opts.Sites, mux: http.NewServeMux()}
	if h.now == nil {
		h.now = time.Now
	}
	h.mux.HandleFunc("GET /v1/messages", h.list)
	h.mux.HandleFunc("GET /v1/messages/{id}", h.show)
	h.mux.HandleFunc("POST /v1/messages/{id}/hold", h.act(q.Hold))
	h.mux.HandleFunc("POST /v1/messages/{id}/release", h.act(q.Release))
	h.mux.HandleFunc("DELETE /v1/messages/{id}", h.delete)
	h.mux.HandleFunc("POST /v1/flush", h.flush)
	h.mux.HandleFunc("GET /v1/tls-reports", h.tlsReports)
	h.mux.HandleFunc("POST /v1/tls-reports/send", h.sendTLSReports)
	h.mux.HandleFunc("GET /v1/sites", h.listSites)
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), RequestTimeout)
	defer cancel()
	r.Body = http.MaxBytesReader(w, r.Body, MaxRequestBytes)
	h.mux.ServeHTTP(w, r.WithContext(ctx))
}

// Recipient is one recipient of a Message with its delivery state.
type Recipient struct {
	Addr        string    `json:"addr"`
	State       string    `json:"state"`
	Attempts    int       `json:"attempts"`
	LastAttempt time.Time `json:"lastAttempt,omitzero"`
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
	LastReply   string    `json:"lastReply,omitempty"`
}

// Message is a queued message as the API shows it.
type Message struct {
	ID         string         `json:"id"`
	Arrival    time.Time      `json:"arrival"`
	From       string         `json:"from"`
	Size       int64          `json:"size"`
	Held       bool           `json:"held"`
	Recipients []Recipient    `json:"recipients"`
	Envelope   queue.Envelope `json:"envelope"`
}

// ListResponse is the answer to a list.
type ListResponse struct {
	Messages []Message `json:"messages"`
	// Next is the after= of the following page, "" when there is none.
	Next string `json:"next,omitempty"`
}

// FlushRequest names the messages to flush; none means all.
type FlushRequest struct {
	IDs []string `json:"ids,omitempty"`
}

// FlushResponse says how many messages were made due now.
type FlushResponse struct {
	Flushed int `json:"flushed"`
}

func fromQueue(m *queue.Message) Message {
	out := Message{ID: m.ID.String(), Arrival: m.Arrival, From: m.Envelope.From, Size: m.Size, Held: m.Held, Envelope: m.Envelope,
		Recipients: make([]Recipient, 0, len(m.Recipients))}
	for i, s := range m.Recipients {
		r := Recipient{State: s.State.String(), Attempts: s.Attempts, LastAttempt: s.LastAttempt, LastReply: s.Reply.String()}
		if i < len(m.Envelope.To) {
			r.Addr = m.Envelope.To[i].Addr
		}
		if s.State == queue.Pending {
			r.NextAttempt = s.NextAttempt
		}
		out.Recipients = append(out.Recipients, r)
	}
	return out
}

// filter selects the messages of a list.
type filter struct {
	sender string        // the sender contains it, case-insensitively
	domain string        // a recipient's domain is it, case-insensitively
	older  time.Duration // arrived more than this long ago
	now    time.Time
	// site: a pending recipient's domain resolved to it (siteOf).
	site   string
	siteOf func(domain string) string
}

func (f *filter) match(m *queue.Message) bool {
	if f.sender != "" && !strings.Contains(strings.ToLower(m.Envelope.From), f.sender) {
		return false
	}
	if f.older > 0 && f.now.Sub(m.Arrival) <= f.older {
		return false
	}
	if f.site != "" && pendingSites(m, f.siteOf)[f.site] == 0 {
		return false
	}
	if f.domain == "" {
		return true
	}
	for _, r := range m.Envelope.To {
		at := strings.LastIndexByte(r.Addr, '@')
		if at >= 0 && strings.EqualFold(r.Addr[at+1:], f.domain) {
			return true
		}
	}
	return false
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request) {
	qv := r.URL.Query()
	f := filter{sender: strings.ToLower(qv.Get("sender")), domain: strings.TrimSuffix(qv.Get("domain"), "."), now: h.now()}
	if s := qv.Get("older"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("older=%q: not a duration", s))
			return
		}
		f.older = d
	}
	if f.site = strings.ToLower(qv.Get("site")); f.site != "" {
		if h.sites == nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("site=%q: %w", f.site, errShapingOff))
			return
		}
		f.siteOf = h.sites.SiteOf
	}
	limit := DefaultLimit
	if s := qv.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 || n > queue.MaxList {
			writeError(w, http.StatusBadRequest, fmt.Errorf("limit=%q: want 1 to %d", s, queue.MaxList))
			return
		}
		limit = n
	}
	var after queue.ID
	if s := qv.Get("after"); s != "" {
		id, err := queue.ParseID(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		after = id
	}
	resp := ListResponse{Messages: []Message{}}
	err := h.walk(r.Context(), after, func(m *queue.Message) bool {
		if !f.match(m) {
			return true
		}
		resp.Messages = append(resp.Messages, fromQueue(m))
		if len(resp.Messages) == limit {
			resp.Next = m.ID.String()
			return false
		}
		return true
	})
	if err != nil {
		writeQueueError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// walk calls fn with each queued message after the given ID, in ID order,
// a page of the queue at a time, until fn returns false or the queue ends.
func (h *Handler) walk(ctx context.Context, after queue.ID, fn func(m *queue.Message) bool) error {
	for {
		page, err := h.q.List(ctx, after, queue.MaxList)
		if err != nil {
			return err
		}
		for i := range page {
			after = page[i].ID
			if !fn(&page[i]) {
				return nil
			}
		}
		if len(page) < queue.MaxList {
			return nil
		}
	}
}

func (h *Handler) show(w http.ResponseWriter, r *http.Request) {
	id, err := queue.ParseID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	m, err := h.q.Get(r.Context(), id)
	if err != nil {
		writeQueueError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, fromQueue(&m))
}

func (h *Handler) act(op func(context.Context, queue.ID) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := queue.ParseID(r.PathValue("id"))
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		if err := op(r.Context(), id); err != nil {
			writeQueueError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"id": id.String()})
	}
}

// DeleteResponse says what a delete did.
type DeleteResponse struct {
	ID string `json:"id"`
	// Bounced counts the pending recipients handed to Options.Bounce as
	// failed (it sends no DSN for a null sender or NOTIFY=NEVER).
	Bounced int `json:"bounced"`
}

func (h *Handler) delete(w http.ResponseWriter, r *http.Request) {
	id, err := queue.ParseID(r.PathValue("id"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	resp := DeleteResponse{ID: id.String()}
	if b := r.URL.Query().Get("bounce"); b == "true" {
		if h.bounce == nil {
			writeError(w, http.StatusNotImplemented, errors.New("this relay cannot bounce deleted mail"))
			return
		}
		m, err := h.q.Get(r.Context(), id)
		if err != nil {
			writeQueueError(w, err)
			return
		}
		var rcpts []int
		for _, i := range m.Pending() {
			m.Recipients[i].State, m.Recipients[i].Reply = queue.Failed, DeletedReply
			rcpts = append(rcpts, i)
		}
		// Bounce first: should it fail, the message stays queued. Should
		// the delete fail after it, a second delete bounces again.
		if len(rcpts) > 0 {
			if err := h.bounce(r.Context(), m, rcpts); err != nil {
				writeError(w, http.StatusInternalServerError, fmt.Errorf("bounce: %w", err))
				return
			}
		}
		resp.Bounced = len(rcpts)
	} else if b != "" && b != "false" {
		writeError(w, http.StatusBadRequest, fmt.Errorf("bounce=%q: want true or false", b))
		return
	}
	if err := h.q.Delete(r.Context(), id); err != nil {
		writeQueueError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *Handler) flush(w http.ResponseWriter, r *http.Request) {
	var req FlushRequest
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("flush request: %w", err))
		return
	}
	if len(req.IDs) > MaxFlushIDs {
		writeError(w, http.StatusBadRequest, fmt.Errorf("%d IDs, at most %d", len(req.IDs), MaxFlushIDs))
		return
	}
	ids := make([]queue.ID, 0, len(req.IDs))
	for _, s := range req.IDs {
		id, err := queue.ParseID(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		ids = append(ids, id)
	}
	n, err := h.q.Flush(r.Context(), ids...)
	if err != nil {
		writeQueueError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, FlushResponse{Flushed: n})
}

func writeQueueError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, queue.ErrNotFound):
		writeError(w, http.StatusNotFound, err)
	case errors.Is(err, queue.ErrInvalid):
		writeError(w, http.StatusBadRequest, err)
	case errors.Is(err, queue.ErrClosed):
		writeError(w, http.StatusServiceUnavailable, err)
	default:
		writeError(w, http.StatusInternalServerError, err)
	}
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}
