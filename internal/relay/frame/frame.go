// Package frame delimits and checksums the records of an append-only
// journal, so that a reader finds where the valid records end after a crash
// cut the last one short or the disk returned damaged bytes.
//
// A record is its payload with a 4-byte big-endian length and a 4-byte
// big-endian CRC-32C. The queue's message journal and the webhook
// notification journal were written before this package existed and place
// the CRC differently; a Format names each layout exactly, so that files
// already on disk read back byte for byte. A Format never converts one
// layout into the other.
//
// A zero length is corrupt in both layouts: it is what a region of zeros
// reads as (a file extended but not written before a crash), and no journal
// writes an empty record.
package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// Overhead is the bytes a record adds to its payload: length and CRC.
const Overhead = 8

// Layout says where the CRC goes and what it covers.
type Layout uint8

const (
	// CRCTrailer: [length][payload][CRC of length and payload]. The
	// queue's message journal (version 1 of its file format) and its
	// segment records (version 2).
	CRCTrailer Layout = iota + 1
	// CRCHeader: [length][CRC of payload][payload]. The webhook
	// notification journal's segments.
	CRCHeader
)

// Format is one journal's framing.
type Format struct {
	Layout Layout
	// MaxPayload bounds a payload: a longer length is corruption, not a
	// reason to allocate or read that much.
	MaxPayload int
}

// Errors of Next and Read. Either one ends what can be read: the length of
// what follows cannot be trusted.
var (
	// ErrTruncated: the input ends inside a record, as a crash during an
	// append leaves it.
	ErrTruncated = errors.New("record cut short")
	// ErrCorrupt: a length out of bounds or a checksum that does not match.
	ErrCorrupt = errors.New("corrupt record")
	// ErrTooLarge: Append was given a payload the format does not allow.
	ErrTooLarge = errors.New("record too large")
)

// DamagedError is the ErrCorrupt of a record whose length was in bounds
// and whose bytes were all there, but whose CRC does not match: the framing
// holds, and the next record begins Size bytes after this one's start. Read
// has consumed the record, so a reader that can tell damage from a torn
// write (a journal known to have been written whole) may skip it and go on;
// the next record's own checks say whether the framing really held.
type DamagedError struct {
	Size int // the whole record, length and CRC included
}

func (e DamagedError) Error() string {
	return fmt.Sprintf("%s: checksum mismatch in a record of %d bytes", ErrCorrupt, e.Size)
}

// Unwrap makes a DamagedError an ErrCorrupt.
func (e DamagedError) Unwrap() error { return ErrCorrupt }

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Append appends payload, framed, to dst. An empty payload or one longer
// than MaxPayload is refused, since Next and Read would refuse it.
func (f Format) Append(dst, payload []byte) ([]byte, error) {
	if len(payload) == 0 || len(payload) > f.MaxPayload {
		return dst, fmt.Errorf("%w: %d bytes, between 1 and %d", ErrTooLarge, len(payload), f.MaxPayload)
	}
	start := len(dst)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(payload))) // #nosec G115 -- at most MaxPayload
	switch f.Layout {
	case CRCTrailer:
		dst = append(dst, payload...)
		return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), nil
	case CRCHeader:
		dst = binary.BigEndian.AppendUint32(dst, crc32.Checksum(payload, castagnoli))
		return append(dst, payload...), nil
	default:
		panic(fmt.Sprintf("frame: unknown layout %d", f.Layout))
	}
}

// Seal frames, in place, a record built in rec after 4 bytes reserved for
// its length (CRCTrailer only): it fills in the length and appends the CRC,
// so that a large payload (a message body read straight into the buffer) is
// never copied to be framed. It refuses what Append refuses.
func (f Format) Seal(rec []byte) ([]byte, error) {
	if f.Layout != CRCTrailer {
		panic(fmt.Sprintf("frame: Seal needs the CRCTrailer layout, not %d", f.Layout))
	}
	n := len(rec) - 4
	if n <= 0 || n > f.MaxPayload {
		return rec, fmt.Errorf("%w: %d bytes, between 1 and %d", ErrTooLarge, max(n, 0), f.MaxPayload)
	}
	binary.BigEndian.PutUint32(rec, uint32(n)) // #nosec G115 -- at most MaxPayload
	return binary.BigEndian.AppendUint32(rec, crc32.Checksum(rec, castagnoli)), nil
}

// head is the length of the fixed fields before the payload. They are read
// whole before the length is judged, as the notification journal always
// has: a record cut inside them is truncated, whatever its length says.
func (f Format) head() int {
	if f.Layout == CRCHeader {
		return Overhead
	}
	return 4
}

// length checks the length field at the start of b.
func (f Format) length(b []byte) (int, error) {
	n := binary.BigEndian.Uint32(b)
	if n == 0 || uint64(n) > uint64(f.MaxPayload) { // #nosec G115 -- MaxPayload is not negative
		return 0, ErrCorrupt
	}
	return int(n), nil
}

// verify checks the CRC of a whole record rec of payload length n and
// returns the payload, a sub-slice of rec.
func (f Format) verify(rec []byte, n int) ([]byte, error) {
	var payload []byte
	var sum, want uint32
	switch f.Layout {
	case CRCTrailer:
		payload = rec[4 : 4+n]
		sum, want = crc32.Checksum(rec[:4+n], castagnoli), binary.BigEndian.Uint32(rec[4+n:])
	case CRCHeader:
		payload = rec[Overhead:]
		sum, want = crc32.Checksum(payload, castagnoli), binary.BigEndian.Uint32(rec[4:])
	default:
		panic(fmt.Sprintf("frame: unknown layout %d", f.Layout))
	}
	if sum != want {
		return nil, DamagedError{Size: n + Overhead}
	}
	return payload, nil
}

// Next decodes the record at the start of b. It returns the payload (a
// sub-slice of b) and the record's length; io.EOF when b is empty,
// ErrTruncated when b ends inside the record, ErrCorrupt when its length or
// CRC is wrong.
func (f Format) Next(b []byte) (payload []byte, size int, err error) {
	if len(b) == 0 {
		return nil, 0, io.EOF
	}
	if len(b) < f.head() {
		return nil, 0, ErrTruncated
	}
	n, err := f.length(b)
	if err != nil {
		return nil, 0, err
	}
	if len(b)-Overhead < n {
		return nil, 0, ErrTruncated
	}
	payload, err = f.verify(b[:n+Overhead], n)
	if err != nil {
		return nil, 0, err
	}
	return payload, n + Overhead, nil
}

// Read reads one record from r and returns its payload (a new slice). It
// returns io.EOF at a clean end, ErrTruncated when r ends inside a record,
// ErrCorrupt when its length or CRC is wrong (a DamagedError for the CRC,
// the record consumed), and r's other errors as they are. It reads nothing
// past the record, and never more than MaxPayload.
func (f Format) Read(r io.Reader) ([]byte, error) {
	head := f.head()
	var h [Overhead]byte
	if err := readFull(r, h[:head], io.EOF); err != nil {
		return nil, err
	}
	n, err := f.length(h[:])
	if err != nil {
		return nil, err
	}
	rec := make([]byte, n+Overhead)
	copy(rec, h[:head])
	if err := readFull(r, rec[head:], ErrTruncated); err != nil {
		return nil, err
	}
	return f.verify(rec, n)
}

// readFull fills b from r. A clean end before the first byte is atStart;
// an end after it is ErrTruncated.
func readFull(r io.Reader, b []byte, atStart error) error {
	_, err := io.ReadFull(r, b)
	switch {
	case errors.Is(err, io.EOF):
		return atStart
	case errors.Is(err, io.ErrUnexpectedEOF):
		return ErrTruncated
	}
	return err
}
