package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/tlsrpt"
)

// TLSReportResponse is the answer to a GET of one domain's TLS report.
type TLSReportResponse struct {
	Day string `json:"day"`
	// Partial: the day is not over, the report holds the sessions so far.
	Partial bool          `json:"partial"`
	Status  tlsrpt.Status `json:"status"`
	// Report is the RFC 8460 section 4.4 JSON as it would be sent now.
	Report json.RawMessage `json:"report"`
}

// errTLSReportsOff is the answer of a relay that does not report.
var errTLSReportsOff = errors.New("TLS reporting is off on this relay (postgate relay --tls-rpt=false)")

// parseDay reads a day= value: YYYY-MM-DD, today or yesterday, a UTC day
// that has begun.
func parseDay(s string, now time.Time) (time.Time, error) {
	now = now.UTC()
	today := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	var day time.Time
	switch s {
	case "today":
		day = today
	case "yesterday":
		day = today.AddDate(0, 0, -1)
	default:
		d, err := time.Parse(time.DateOnly, s)
		if err != nil {
			return time.Time{}, fmt.Errorf("day=%q: want YYYY-MM-DD, today or yesterday (UTC)", s)
		}
		day = d
	}
	if day.After(today) {
		return time.Time{}, fmt.Errorf("day=%s has not begun (today is %s UTC)", s, today.Format(time.DateOnly))
	}
	return day, nil
}

func (h *Handler) tlsReports(w http.ResponseWriter, r *http.Request) {
	if h.tlsrpt == nil {
		writeError(w, http.StatusNotFound, errTLSReportsOff)
		return
	}
	qv := r.URL.Query()
	dayText := qv.Get("day")
	if dayText == "" {
		dayText = "today"
	}
	day, err := parseDay(dayText, h.now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	sum := h.tlsrpt.Summary(day)
	domain := strings.ToLower(strings.TrimSuffix(qv.Get("domain"), "."))
	if domain == "" {
		writeJSON(w, http.StatusOK, sum)
		return
	}
	report, err := h.tlsrpt.Report(domain, day)
	if err != nil {
		writeTLSReportError(w, err)
		return
	}
	resp := TLSReportResponse{Day: sum.Day, Partial: sum.Partial, Report: report}
	for _, s := range sum.Domains {
		if s.Domain == domain {
			resp.Status = s
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *Handler) sendTLSReports(w http.ResponseWriter, r *http.Request) {
	if h.tlsrpt == nil {
		writeError(w, http.StatusConflict, errTLSReportsOff)
		return
	}
	qv := r.URL.Query()
	if qv.Get("day") == "" {
		// Sending today's reports makes them partial: not a default.
		writeError(w, http.StatusBadRequest, errors.New("day= is required: YYYY-MM-DD, today or yesterday (UTC)"))
		return
	}
	day, err := parseDay(qv.Get("day"), h.now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	st, err := h.tlsrpt.Send(r.Context(), day, strings.TrimSuffix(qv.Get("domain"), "."))
	if err != nil {
		writeTLSReportError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func writeTLSReportError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, tlsrpt.ErrNoSessions):
		writeError(w, http.StatusNotFound, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		writeError(w, http.StatusGatewayTimeout, fmt.Errorf("time ran out before every report was tried (an attempt cut short is retried by the relay); see GET /v1/tls-reports, and send again: %w", err))
	default:
		writeError(w, http.StatusInternalServerError, err)
	}
}
