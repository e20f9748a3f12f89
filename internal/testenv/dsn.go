package testenv

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"strings"
)

// ErrNotDSN is returned by ParseDSN for a message that is not a
// multipart/report of a delivery status.
var ErrNotDSN = errors.New("not a delivery status notification")

// maxParseDSN bounds what ParseDSN reads of a message and of each part.
const maxParseDSN = 8 << 20

// DSN is a parsed delivery status notification, for tests to check what
// the relay sends.
type DSN struct {
	// Header is the DSN's own header.
	Header mail.Header
	// Human is the text/plain part, decoded.
	Human string
	// PerMessage are the per-message fields of the delivery-status
	// (Reporting-MTA, Arrival-Date...), PerRecipient one set per reported
	// recipient (Final-Recipient, Action, Status...), folded lines joined.
	PerMessage   textproto.MIMEHeader
	PerRecipient []textproto.MIMEHeader
	// OriginalType is the media type of the returned original
	// (message/rfc822, text/rfc822-headers, message/global,
	// message/global-headers), "" when none; Original its content,
	// decoded.
	OriginalType string
	Original     []byte
}

// ParseDSN reads a DSN as RFC 3464 and RFC 6522 lay it out. It reads at most
// 8 MiB and checks the fields a DSN must have: Reporting-MTA once per
// message, Final-Recipient, Action and Status per recipient.
func ParseDSN(r io.Reader) (*DSN, error) {
	m, err := mail.ReadMessage(bufio.NewReader(io.LimitReader(r, maxParseDSN)))
	if err != nil {
		return nil, fmt.Errorf("dsn: %w", err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || !strings.EqualFold(params["report-type"], "delivery-status") || params["boundary"] == "" {
		return nil, fmt.Errorf("content type %q: %w", m.Header.Get("Content-Type"), ErrNotDSN)
	}
	rep := &DSN{Header: m.Header}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var sawText, sawStatus bool
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dsn: %w", err)
		}
		body, err := io.ReadAll(io.LimitReader(p, maxParseDSN))
		if err != nil {
			return nil, fmt.Errorf("dsn: %w", err)
		}
		pt := "text/plain" // RFC 2045 section 5.2
		if ct := p.Header.Get("Content-Type"); ct != "" {
			if pt, _, err = mime.ParseMediaType(ct); err != nil {
				return nil, fmt.Errorf("dsn: part content type %q: %w", ct, err)
			}
		}
		switch pt {
		case "text/plain":
			if !sawText {
				rep.Human, sawText = string(body), true
			}
		case "message/delivery-status", "message/global-delivery-status":
			if sawStatus {
				return nil, errors.New("dsn: more than one delivery-status part")
			}
			sawStatus = true
			if rep.PerMessage, rep.PerRecipient, err = parseDeliveryStatus(body); err != nil {
				return nil, err
			}
		case "message/rfc822", "text/rfc822-headers", "message/global", "message/global-headers":
			if rep.OriginalType == "" {
				rep.OriginalType, rep.Original = pt, body
			}
		}
	}
	if !sawStatus {
		return nil, fmt.Errorf("no delivery-status part: %w", ErrNotDSN)
	}
	return rep, nil
}

// parseDeliveryStatus splits a delivery-status body into its groups of fields,
// separated by empty lines (RFC 3464 section 2.1).
func parseDeliveryStatus(body []byte) (textproto.MIMEHeader, []textproto.MIMEHeader, error) {
	tr := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
	var groups []textproto.MIMEHeader
	for {
		h, err := tr.ReadMIMEHeader()
		if len(h) > 0 {
			groups = append(groups, h)
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("dsn: delivery-status: %w", err)
		}
	}
	if len(groups) == 0 || groups[0].Get("Reporting-MTA") == "" {
		return nil, nil, errors.New("dsn: delivery-status: no Reporting-MTA")
	}
	if len(groups) == 1 {
		return nil, nil, errors.New("dsn: delivery-status: no recipient")
	}
	for i, g := range groups[1:] {
		for _, f := range []string{"Final-Recipient", "Action", "Status"} {
			if g.Get(f) == "" {
				return nil, nil, fmt.Errorf("dsn: delivery-status: recipient %d has no %s", i+1, f)
			}
		}
	}
	return groups[0], groups[1:], nil
}
