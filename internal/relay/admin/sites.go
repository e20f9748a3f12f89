package admin

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
	"github.com/postgate/postgate/internal/relay/shaping"
)

// Sites is what the endpoint needs of traffic shaping (docs/design.md,
// "Traffic shaping"): the limiter's state per site (*shaping.Limiter), and
// delivery's memory of the site each recipient domain resolved to
// (delivery.Worker.SiteOf).
type Sites interface {
	Stats() []shaping.SiteStats
	SiteOf(domain string) string
}

// errShapingOff is the answer of a relay that does not shape.
var errShapingOff = errors.New("traffic shaping is off on this relay (postgate relay --shaping)")

// SiteLimits are the limits in force on this relay (the rule's, divided
// by the live replicas); 0 is no limit.
type SiteLimits struct {
	MaxConnections             int `json:"maxConnections"`
	MaxMessagesPerConnection   int `json:"maxMessagesPerConnection"`
	MaxMessagesPerMinute       int `json:"maxMessagesPerMinute"`
	MaxMessagesPerHour         int `json:"maxMessagesPerHour"`
	MaxNewConnectionsPerMinute int `json:"maxNewConnectionsPerMinute"`
}

// Site is one traffic shaping site as the API shows it: the limiter's
// state and counters since the relay started (or since it last forgot the
// idle site), and the queued mail that waits for it.
type Site struct {
	Name string `json:"name"`
	// Rule is the policy rule that applies; "" for a site the limiter has
	// forgotten (idle) while mail for it is still queued.
	Rule                   string            `json:"rule,omitempty"`
	Limits                 *SiteLimits       `json:"limits,omitempty"`
	OpenConnections        int               `json:"openConnections"`
	ConnectionsOpened      uint64            `json:"connectionsOpened"`
	MessagesGranted        uint64            `json:"messagesGranted"`
	Refused                map[string]uint64 `json:"refused,omitempty"`
	DeferredWithoutAttempt uint64            `json:"deferredWithoutAttempt"`
	ThrottleReplies        uint64            `json:"throttleReplies"`
	Suspensions            uint64            `json:"suspensions"`
	SuspendedUntil         time.Time         `json:"suspendedUntil,omitzero"`
	SuspendedReason        string            `json:"suspendedReason,omitempty"`
	// QueuedMessages and QueuedRecipients count the messages not on hold
	// with a pending recipient in a domain that resolved to the site, and
	// those recipients.
	QueuedMessages   int `json:"queuedMessages"`
	QueuedRecipients int `json:"queuedRecipients"`
}

// SitesResponse is the answer to GET /v1/sites.
type SitesResponse struct {
	Sites []Site `json:"sites"`
	// UnknownMessages and UnknownRecipients count the queued mail (not on
	// hold, pending) whose recipient domain delivery has not resolved since
	// the relay started (or no longer remembers): its site is not known.
	UnknownMessages   int `json:"unknownMessages"`
	UnknownRecipients int `json:"unknownRecipients"`
}

// recipientDomain is the domain of an address, "" when it has none.
func recipientDomain(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return ""
	}
	return addr[at+1:]
}

// pendingSites returns, per site, how many of m's pending recipients wait
// for it ("" for those whose site is not known).
func pendingSites(m *queue.Message, siteOf func(string) string) map[string]int {
	out := map[string]int{}
	for i, s := range m.Recipients {
		if s.State != queue.Pending || i >= len(m.Envelope.To) {
			continue
		}
		out[siteOf(recipientDomain(m.Envelope.To[i].Addr))]++
	}
	return out
}

func (h *Handler) listSites(w http.ResponseWriter, r *http.Request) {
	if h.sites == nil {
		writeError(w, http.StatusNotFound, errShapingOff)
		return
	}
	type queued struct{ messages, recipients int }
	waiting := map[string]*queued{}
	err := h.walk(r.Context(), "", func(m *queue.Message) bool {
		if m.Held {
			return true
		}
		for name, n := range pendingSites(m, h.sites.SiteOf) {
			q := waiting[name]
			if q == nil {
				q = &queued{}
				waiting[name] = q
			}
			q.messages++
			q.recipients += n
		}
		return true
	})
	if err != nil {
		writeQueueError(w, err)
		return
	}
	var resp SitesResponse
	if q := waiting[""]; q != nil {
		resp.UnknownMessages, resp.UnknownRecipients = q.messages, q.recipients
		delete(waiting, "")
	}
	stats := h.sites.Stats()
	resp.Sites = make([]Site, 0, len(stats)+len(waiting))
	for _, st := range stats {
		s := siteOf(&st)
		if q := waiting[s.Name]; q != nil {
			s.QueuedMessages, s.QueuedRecipients = q.messages, q.recipients
			delete(waiting, s.Name)
		}
		resp.Sites = append(resp.Sites, s)
	}
	// Sites delivery knows that the limiter forgot (idle) while mail for
	// them is still queued.
	for name, q := range waiting {
		resp.Sites = append(resp.Sites, Site{Name: name, QueuedMessages: q.messages, QueuedRecipients: q.recipients})
	}
	slices.SortFunc(resp.Sites, func(a, b Site) int { return strings.Compare(a.Name, b.Name) })
	writeJSON(w, http.StatusOK, resp)
}

func siteOf(s *shaping.SiteStats) Site {
	out := Site{
		Name: s.Site, Rule: s.Rule,
		Limits: &SiteLimits{
			MaxConnections: s.Limits.MaxConnections, MaxMessagesPerConnection: s.Limits.MaxMessagesPerConnection,
			MaxMessagesPerMinute: s.Limits.MaxMessagesPerMinute, MaxMessagesPerHour: s.Limits.MaxMessagesPerHour,
			MaxNewConnectionsPerMinute: s.Limits.MaxNewConnectionsPerMinute,
		},
		OpenConnections: s.OpenConnections, ConnectionsOpened: s.ConnectionsOpened, MessagesGranted: s.MessagesGranted,
		DeferredWithoutAttempt: s.DeferredWithoutAttempt, ThrottleReplies: s.ThrottleReplies, Suspensions: s.Suspensions,
		SuspendedUntil: s.SuspendedUntil, SuspendedReason: s.SuspendedReason,
	}
	for reason, n := range s.Refused {
		if n == 0 {
			continue
		}
		if out.Refused == nil {
			out.Refused = map[string]uint64{}
		}
		out.Refused[string(reason)] = n
	}
	return out
}
