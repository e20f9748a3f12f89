package notify

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/postgate/postgate/internal/relay/frame"
	"github.com/postgate/postgate/internal/relay/queue"
)

// A segment is a sequence of records (frame.CRCHeader):
//
//	length  uint32, big endian: the payload's length
//	crc     uint32, big endian: CRC-32C of the payload
//	payload JSON of a record
//
// A crash can leave the last record of a segment cut short; that record
// was never acknowledged to anyone (nothing is sent before its fsync), so it
// is skipped. A record that fails its checksum ends what can be read of the
// segment: the length of what follows cannot be trusted.
const (
	recordHeader = frame.Overhead
	// maxRecord bounds one record: a notification is a few hundred bytes
	// (reply text is at most 512 bytes), so a larger length is corruption.
	maxRecord = 64 << 10
)

// segmentFormat frames the records of a segment.
var segmentFormat = frame.Format{Layout: frame.CRCHeader, MaxPayload: maxRecord}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Errors of readRecord.
var (
	errTruncated = frame.ErrTruncated
	errCorrupt   = frame.ErrCorrupt
)

// errNotSegment: a name ending in .seg that is no regular file.
var errNotSegment = errors.New("not a regular file")

// appendRecord appends payload, framed, to dst. The writer checks the
// payload's size first.
func appendRecord(dst, payload []byte) []byte {
	b, err := segmentFormat.Append(dst, payload)
	if err != nil {
		panic(err) // the writer bounds payloads by maxRecord; JSON is never empty
	}
	return b
}

// readRecord reads one record. It returns io.EOF at a clean end,
// errTruncated when r ends inside a record, errCorrupt when the header or
// checksum is wrong.
func readRecord(r io.Reader) ([]byte, error) { return segmentFormat.Read(r) }

// segment is one file of a queue.
type segment struct {
	id   uint64
	name string // in the queue's directory
	// end is where the readable records end: the committed (fsynced) size
	// of the segment being written, the end of the last valid record of
	// one found at startup.
	end int64
	// size is the file's size, for the journal's disk use.
	size int64
	// count is how many records lie between the cursor at startup (or the
	// segment's start) and end; acked how many of them are done with.
	count, acked int
	// f is open for appending while the writer uses the segment.
	f queue.File
}

func segmentName(id uint64) string { return fmt.Sprintf("%020d.seg", id) }

// position is a place in a queue: a segment and an offset in it.
type position struct {
	seg uint64
	off int64
}

// outbox is the journal of one sender domain: a queue of notifications.
type outbox struct {
	name string
	fs   queue.FS      // the queue's directory
	wake chan struct{} // the writer committed records

	mu   sync.Mutex
	segs []*segment // oldest first; the writer appends to the last when its f is set
	// cursor: every record before it was acknowledged or dropped.
	cursor position
	// pending counts the records after cursor.
	pending int
	// lastID is the highest segment id used; active the segment the writer
	// appends to (writer only; its f, under mu, tells the sender).
	lastID uint64
	active *segment
	// retire asks the writer to close active: the sender has read it all.
	retire bool
	// cursorFile is the sender's, open while it runs.
	cursorFile queue.File
}

// scanResult is what opening a segment found.
type scanResult struct {
	// count is how many readable records start at or after the offset
	// asked for.
	count int
	end   int64
	size  int64 // the file's
	err   error // errTruncated or errCorrupt at end, nil for a clean end
	// boundary reports whether the offset asked for is the start of the
	// segment or the end of one of its readable records: a place a cursor
	// of this segment can be.
	boundary bool
}

// scanSegment reads a segment's records from its start, counts those at or
// after off and reports where the readable ones end. It reads from the start
// so that a cursor that does not fit the segment (past its end, or inside a
// record: written for an older file of the same number, or damaged) is
// caught rather than trusted.
func scanSegment(fsys queue.FS, name string, off int64) (scanResult, error) {
	f, err := fsys.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return scanResult{}, err
	}
	defer func() { _ = f.Close() }() // read only
	st, err := f.Stat()
	if err != nil {
		return scanResult{}, err
	}
	if !st.Mode().IsRegular() {
		return scanResult{}, errNotSegment
	}
	r := bufio.NewReader(f)
	res := scanResult{boundary: off == 0, size: st.Size()}
	for {
		p, err := readRecord(r)
		if errors.Is(err, io.EOF) {
			return res, nil
		}
		if errors.Is(err, errTruncated) || errors.Is(err, errCorrupt) {
			res.err = err
			return res, nil
		}
		if err != nil {
			return res, err
		}
		if res.end >= off {
			res.count++
		}
		res.end += int64(recordHeader + len(p))
		res.boundary = res.boundary || res.end == off
	}
}

// The cursor file holds "<segment> <offset> <crc>\n" in fixed widths, the
// CRC-32C covering what precedes it. It is overwritten in place and not
// fsynced: a rename (which ext4 flushes) or an fsync per acknowledged
// request would bound the send rate by the disk. A cursor lost or torn in a
// crash fails its checksum and the queue is resent: duplicates, which
// receivers handle, rather than losses.
const cursorLen = 20 + 1 + 20 + 1 + 8 + 1

func formatCursor(p position) []byte {
	b := fmt.Appendf(make([]byte, 0, cursorLen), "%020d %020d ", p.seg, p.off)
	return fmt.Appendf(b, "%08x\n", crc32.Checksum(b, crcTable))
}

// cursorName is the cursor file's name in a queue's directory.
const cursorName = "cursor"

// readCursor reads a queue's cursor file; the zero position (everything
// pending) when there is none.
func readCursor(fsys queue.FS) (position, error) {
	f, err := fsys.OpenFile(cursorName, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return position{}, nil
	}
	if err != nil {
		return position{}, err
	}
	b, err := io.ReadAll(io.LimitReader(f, cursorLen+1))
	_ = f.Close() // read only
	if err != nil {
		return position{}, err
	}
	fields := strings.Fields(string(b))
	if len(b) != cursorLen || len(fields) != 3 {
		return position{}, errors.New("cursor file damaged")
	}
	s, err1 := strconv.ParseUint(fields[0], 10, 64)
	o, err2 := strconv.ParseInt(fields[1], 10, 64)
	if err1 != nil || err2 != nil || o < 0 || !bytes.Equal(formatCursor(position{s, o}), b) {
		return position{}, errors.New("cursor file damaged")
	}
	return position{s, o}, nil
}

// writeCursor overwrites the cursor file f (opened by openCursor).
func writeCursor(f queue.File, p position) error {
	_, err := f.WriteAt(formatCursor(p), 0)
	return err
}

func openCursor(fsys queue.FS) (queue.File, error) {
	return fsys.OpenFile(cursorName, os.O_CREATE|os.O_WRONLY, 0o600)
}

// listSegments returns the segment ids in a queue's directory, sorted.
func listSegments(fsys queue.FS) ([]uint64, error) {
	names, err := fsys.ReadDirNames()
	if err != nil {
		return nil, err
	}
	var ids []uint64
	for _, n := range names {
		name, ok := strings.CutSuffix(n, ".seg")
		if !ok {
			continue
		}
		id, err := strconv.ParseUint(name, 10, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids, nil
}

// validName reports whether a domain name can name a queue directory: a
// lowercased domain name, which holds no path separator and is not "." or
// "..". Anything else cannot be a SenderDomain.
func validName(s string) bool {
	if s == "" || len(s) > 253 || s[0] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '-' && c != '_' {
			return false
		}
	}
	return true
}

// pendingBytes is the size of the records after the cursor: what a domain
// holds of the journal, for MaxDomainJournalBytes. Sent records in a
// segment not yet deleted do not count: they go with their segment.
func (q *outbox) pendingBytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	var b int64
	for i, s := range q.segs {
		b += s.end
		if i == 0 && q.cursor.seg == s.id {
			b -= min(q.cursor.off, s.end)
		}
	}
	return b
}
