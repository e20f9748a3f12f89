package tlsrpt

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"mime"
	"net/netip"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/rfc5322"
)

// The report of RFC 8460 section 4.4, field for field.
type reportJSON struct {
	OrganizationName string         `json:"organization-name"`
	DateRange        dateRangeJSON  `json:"date-range"`
	ContactInfo      string         `json:"contact-info"`
	ReportID         string         `json:"report-id"`
	Policies         []policyResult `json:"policies"`
}

type dateRangeJSON struct {
	Start string `json:"start-datetime"`
	End   string `json:"end-datetime"`
}

type policyResult struct {
	Policy         policyJSON    `json:"policy"`
	Summary        summaryJSON   `json:"summary"`
	FailureDetails []failureJSON `json:"failure-details,omitempty"`
}

type policyJSON struct {
	Type   PolicyType `json:"policy-type"`
	String []string   `json:"policy-string,omitempty"`
	Domain string     `json:"policy-domain"`
	MXHost []string   `json:"mx-host,omitempty"`
}

type summaryJSON struct {
	Successful int64 `json:"total-successful-session-count"`
	Failure    int64 `json:"total-failure-session-count"`
}

type failureJSON struct {
	ResultType          string `json:"result-type"`
	SendingMTAIP        string `json:"sending-mta-ip,omitempty"`
	ReceivingMXHostname string `json:"receiving-mx-hostname,omitempty"`
	ReceivingMXHelo     string `json:"receiving-mx-helo,omitempty"`
	ReceivingIP         string `json:"receiving-ip,omitempty"`
	FailedSessionCount  int64  `json:"failed-session-count"`
	AdditionalInfo      string `json:"additional-information,omitempty"`
	FailureReasonCode   string `json:"failure-reason-code,omitempty"`
}

// reportID is the report-id of a domain's report of a day: unique per
// report and replica (section 4.4 leaves the scheme to the sender).
func (r *Reporter) reportID(dom *domainState) string {
	return dom.UniqueID + "@" + r.opts.Submitter
}

// dayEnd is the last second of the day (section 4.4's example ends the day
// at 23:59:59Z; the file name's end timestamp agrees).
func dayEnd(day time.Time) time.Time { return day.AddDate(0, 0, 1).Add(-time.Second) }

// rangeEnd is the end of what a report covers: the day's end, or the first
// attempt to send it when that came earlier (Send on the day itself),
// since the counts stop there.
func rangeEnd(day time.Time, dom *domainState) time.Time {
	end := dayEnd(day)
	if !dom.First.IsZero() && dom.First.Before(end) {
		end = dom.First.UTC().Truncate(time.Second)
	}
	return end
}

// reportJSON builds the report; r.mu is held.
func (r *Reporter) reportJSON(day time.Time, dom *domainState) ([]byte, error) {
	rep := reportJSON{
		OrganizationName: r.opts.OrganizationName,
		DateRange:        dateRangeJSON{Start: day.Format(time.RFC3339), End: rangeEnd(day, dom).Format(time.RFC3339)},
		ContactInfo:      r.opts.ContactInfo,
		ReportID:         r.reportID(dom),
		Policies:         make([]policyResult, 0, len(dom.Policies)),
	}
	for _, p := range dom.Policies {
		pr := policyResult{
			Policy:  policyJSON{Type: p.Policy.Type, String: p.Policy.Strings, Domain: p.Policy.Domain, MXHost: p.Policy.MXHosts},
			Summary: summaryJSON{Successful: p.Success, Failure: p.Failure},
		}
		for _, d := range p.Details {
			f := d.Failure
			pr.FailureDetails = append(pr.FailureDetails, failureJSON{
				ResultType: f.Result, SendingMTAIP: addrString(f.SendingMTAIP), ReceivingIP: addrString(f.ReceivingIP),
				ReceivingMXHostname: f.ReceivingMXHostname, ReceivingMXHelo: f.ReceivingMXHelo,
				FailedSessionCount: d.Count, AdditionalInfo: f.AdditionalInfo, FailureReasonCode: f.FailureReasonCode,
			})
		}
		rep.Policies = append(rep.Policies, pr)
	}
	return json.Marshal(rep)
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func gzipped(data []byte) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = zw.Write(data) // a bytes.Buffer does not fail
	_ = zw.Close()
	return b.Bytes()
}

// fileName is the attachment's name (section 5.3):
// submitter!policy-domain!begin-timestamp!end-timestamp!unique-id.json.gz,
// the timestamps in seconds since the epoch.
func (r *Reporter) fileName(domain string, day time.Time, dom *domainState) string {
	return fmt.Sprintf("%s!%s!%d!%d!%s.json.gz", r.opts.Submitter, domain, day.Unix(), rangeEnd(day, dom).Unix(), dom.UniqueID)
}

// mailReport is the RFC 5322 message of a report (section 5.3): a
// multipart/report of report-type "tlsrpt" with a short text part and the
// gzip JSON, base64, as an application/tlsrpt+gzip attachment; the Subject
// and the TLS-Report-Domain and TLS-Report-Submitter fields the section
// asks for.
func (r *Reporter) mailReport(to []string, domain, fileName, reportID string, day time.Time, gz []byte) []byte {
	boundary := "tlsrpt-" + newUniqueID()
	var b bytes.Buffer
	header := func(name, value string) { fmt.Fprintf(&b, "%s: %s\r\n", name, value) }
	header("From", "<"+r.opts.From+">")
	header("To", "<"+strings.Join(to, ">, <")+">")
	header("Date", r.opts.Clock.Now().Format(rfc5322.DateLayout))
	header("Message-ID", rfc5322.NewMessageID(r.opts.Submitter))
	header("Subject", fmt.Sprintf("Report Domain: %s Submitter: %s Report-ID: <%s>", domain, r.opts.Submitter, reportID))
	header("TLS-Report-Domain", domain)
	header("TLS-Report-Submitter", r.opts.Submitter)
	header("Auto-Submitted", "auto-generated") // RFC 3834: no auto-replies
	// RFC 8460 section 5.3: a report goes out "despite any TLS-related
	// failures" (it may be about them); RFC 8689 section 5 is how a
	// message says so to the MTAs that deliver it.
	header("TLS-Required", "No")
	header("MIME-Version", "1.0")
	header("Content-Type", mime.FormatMediaType("multipart/report", map[string]string{"report-type": "tlsrpt", "boundary": boundary}))
	b.WriteString("\r\n")
	b.WriteString("This is a multipart message in MIME format.\r\n")
	fmt.Fprintf(&b, "\r\n--%s\r\n", boundary)
	header("Content-Type", "text/plain; charset=us-ascii")
	header("Content-Transfer-Encoding", "7bit")
	b.WriteString("\r\n")
	fmt.Fprintf(&b, "This is an aggregate TLS report (RFC 8460) from %s\r\nfor %s, %s UTC.\r\n",
		r.opts.Submitter, domain, day.Format(time.DateOnly))
	fmt.Fprintf(&b, "\r\n--%s\r\n", boundary)
	header("Content-Type", mime.FormatMediaType("application/tlsrpt+gzip", map[string]string{"name": fileName}))
	header("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": fileName}))
	header("Content-Transfer-Encoding", "base64")
	b.WriteString("\r\n")
	enc := base64.StdEncoding.EncodeToString(gz)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	fmt.Fprintf(&b, "--%s--\r\n", boundary)
	return b.Bytes()
}
