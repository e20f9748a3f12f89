package queue

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/postgate/postgate/internal/relay/frame"
)

// The record format; doc.go describes it for readers.
const (
	magic      = "PGQ\x01" // the last byte is the format version
	fixedLen   = 24        // magic, header length, body length, body CRC, header CRC
	maxHeader  = 8 << 20   // a header holds the envelope: 1000 recipients of 2 KiB, escaped
	maxRecord  = 2 << 20   // a snapshot of 1000 recipients with full replies fits
	maxJournal = 16 << 20  // compaction keeps journals far below
)

// journalFormat frames journal records: [length][JSON][CRC of both].
var journalFormat = frame.Format{Layout: frame.CRCTrailer, MaxPayload: maxRecord}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// header is the JSON after the fixed header.
type header struct {
	ID       ID        `json:"id"`
	Arrival  time.Time `json:"arrival"`
	Envelope Envelope  `json:"envelope"`
}

// layout locates the parts of a decoded record.
type layout struct {
	headerLen int64  // fixed header and JSON
	bodyLen   int64  //
	bodyCRC   uint32 //
	end       int64  // end of the last valid journal record
	journal   int64  // bytes of valid journal records
	snapshot  int64  // size of the snapshot the journal began with, if any
}

func (l layout) bodyEnd() int64 { return l.headerLen + l.bodyLen }

// marshal encodes v as compact JSON without HTML escaping, which would
// multiply the size of addresses with < > &.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// encodeHeaderJSON encodes the variable part of the header.
func encodeHeaderJSON(h *header) ([]byte, error) {
	js, err := marshal(h)
	if err != nil {
		return nil, err
	}
	if len(js) > maxHeader {
		return nil, fmt.Errorf("envelope encodes to %d bytes, at most %d: %w", len(js), maxHeader, ErrInvalid)
	}
	return js, nil
}

// fixedHeader returns the fixed header for a header JSON and body; the
// header CRC covers the fixed fields and the JSON.
func fixedHeader(js []byte, bodyLen int64, bodyCRC uint32) []byte {
	b := make([]byte, fixedLen)
	copy(b, magic)
	binary.BigEndian.PutUint32(b[4:], uint32(len(js))) //nolint:gosec // at most maxHeader
	binary.BigEndian.PutUint64(b[8:], uint64(bodyLen)) //nolint:gosec // not negative
	binary.BigEndian.PutUint32(b[16:], bodyCRC)
	crc := crc32.Update(crc32.Checksum(b[:20], castagnoli), castagnoli, js)
	binary.BigEndian.PutUint32(b[20:], crc)
	return b
}

// parseFixed checks the magic and returns the fixed fields.
func parseFixed(b []byte) (headerJSON int64, bodyLen int64, bodyCRC uint32, err error) {
	if len(b) < fixedLen || string(b[:4]) != magic {
		return 0, 0, 0, fmt.Errorf("bad magic: %w", ErrCorrupt)
	}
	hl := binary.BigEndian.Uint32(b[4:])
	bl := binary.BigEndian.Uint64(b[8:])
	if hl > maxHeader || bl > 1<<50 {
		return 0, 0, 0, fmt.Errorf("impossible lengths: %w", ErrCorrupt)
	}
	return int64(hl), int64(bl), binary.BigEndian.Uint32(b[16:]), nil //nolint:gosec // bounded above
}

// decodeHeader verifies the header CRC and decodes the JSON. A header that
// decodes is valid: the envelope passes the checks Enqueue makes.
func decodeHeader(fixed, js []byte) (*header, error) {
	crc := crc32.Update(crc32.Checksum(fixed[:20], castagnoli), castagnoli, js)
	if crc != binary.BigEndian.Uint32(fixed[20:]) {
		return nil, fmt.Errorf("header checksum mismatch: %w", ErrCorrupt)
	}
	return decodeHeaderJSON(js)
}

func decodeHeaderJSON(js []byte) (*header, error) {
	var h header
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("header: %w: %w", ErrCorrupt, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("header: trailing data: %w", ErrCorrupt)
	}
	if _, err := ParseID(string(h.ID)); err != nil {
		return nil, fmt.Errorf("header: %w: %w", ErrCorrupt, err)
	}
	if h.Arrival.IsZero() {
		return nil, fmt.Errorf("header: no arrival time: %w", ErrCorrupt)
	}
	if err := h.Envelope.validate(MaxRecipients); err != nil {
		return nil, fmt.Errorf("header: %w: %w", ErrCorrupt, err)
	}
	return &h, nil
}

// record is one journal entry: the new status of the recipients it names
// and, when set, the new held flag. Replaying a journal applies the records
// in order; a snapshot is a record naming every recipient.
type record struct {
	Time  time.Time    `json:"t"`
	Held  *bool        `json:"held,omitempty"`
	Rcpts []rcptStatus `json:"rcpts,omitempty"`
}

type rcptStatus struct {
	Index int `json:"i"`
	RecipientStatus
}

// encodeRecord frames a journal record: length, JSON, CRC of both.
func encodeRecord(r *record) ([]byte, error) {
	js, err := marshal(r)
	if err != nil {
		return nil, err
	}
	b, err := journalFormat.Append(nil, js)
	if err != nil {
		return nil, fmt.Errorf("journal record: %w: %w", ErrInvalid, err)
	}
	return b, nil
}

// snapshotRecord returns a record that restates the whole state of m.
func snapshotRecord(m *Message, at time.Time) *record {
	held := m.Held
	r := &record{Time: at, Held: &held, Rcpts: make([]rcptStatus, len(m.Recipients))}
	for i, s := range m.Recipients {
		r.Rcpts[i] = rcptStatus{Index: i, RecipientStatus: s}
	}
	return r
}

// nextRecord decodes the record at the start of b and applies it to m. It
// returns the record's length, or 0 when b does not start with a whole
// valid record (m is then unchanged): the end of the valid records, where a
// crash cut one short.
func nextRecord(b []byte, m *Message) int {
	js, n, err := journalFormat.Next(b)
	if err != nil {
		return 0
	}
	r, err := decodeRecord(js, len(m.Recipients))
	if err != nil {
		return 0
	}
	r.apply(m)
	return n
}

// decodeRecord decodes a journal record's JSON for a message of n
// recipients and checks it. Unknown fields are refused, and replay stops
// at a refused record: new state goes into the existing fields or a new
// format version (doc.go, the note on deferrals without attempt).
func decodeRecord(js []byte, n int) (*record, error) {
	var r record
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil || dec.More() || r.Time.IsZero() {
		return nil, fmt.Errorf("journal record: %w", ErrCorrupt)
	}
	for _, s := range r.Rcpts {
		if s.Index < 0 || s.Index >= n || s.validate() != nil {
			return nil, fmt.Errorf("journal record: %w", ErrCorrupt)
		}
	}
	return &r, nil
}

// apply applies a valid record to m.
func (r *record) apply(m *Message) {
	if r.Held != nil {
		m.Held = *r.Held
	}
	for _, s := range r.Rcpts {
		m.Recipients[s.Index] = s.RecipientStatus
	}
}

// newMessage returns the state of a message as enqueued: every recipient
// pending and due on arrival.
func newMessage(h *header, bodyLen int64) Message {
	m := Message{ID: h.ID, Arrival: h.Arrival, Envelope: h.Envelope, Size: bodyLen}
	m.Recipients = make([]RecipientStatus, len(h.Envelope.To))
	for i := range m.Recipients {
		m.Recipients[i] = RecipientStatus{State: Pending, NextAttempt: h.Arrival}
	}
	return m
}

// decodeFile reads a message file of the given size: the header (which
// must be whole and valid), the body's place (which must be all there; its
// CRC is checked when the body is read), and the journal up to the first
// record that is not whole and valid, a crash's torn tail.
func decodeFile(r io.ReaderAt, size int64) (Message, layout, error) {
	var l layout
	fixed := make([]byte, fixedLen)
	if _, err := r.ReadAt(fixed, 0); err != nil {
		return Message{}, l, fmt.Errorf("short header: %w", ErrCorrupt)
	}
	hl, bl, bodyCRC, err := parseFixed(fixed)
	if err != nil {
		return Message{}, l, err
	}
	l = layout{headerLen: fixedLen + hl, bodyLen: bl, bodyCRC: bodyCRC}
	if size < l.bodyEnd() {
		return Message{}, l, fmt.Errorf("file of %d bytes, header says at least %d: %w", size, l.bodyEnd(), ErrCorrupt)
	}
	js := make([]byte, hl)
	if _, err := r.ReadAt(js, fixedLen); err != nil {
		return Message{}, l, fmt.Errorf("short header: %w", ErrCorrupt)
	}
	h, err := decodeHeader(fixed, js)
	if err != nil {
		return Message{}, l, err
	}
	m := newMessage(h, bl)
	journal := make([]byte, min(size-l.bodyEnd(), maxJournal))
	if _, err := r.ReadAt(journal, l.bodyEnd()); err != nil && !errors.Is(err, io.EOF) {
		return Message{}, l, err
	}
	l.end = l.bodyEnd()
	for off, first := 0, true; off < len(journal); first = false {
		n := nextRecord(journal[off:], &m)
		if n == 0 {
			break
		}
		if first {
			l.snapshot = int64(n)
		}
		off += n
		l.end += int64(n)
	}
	l.journal = l.end - l.bodyEnd()
	return m, l, nil
}
