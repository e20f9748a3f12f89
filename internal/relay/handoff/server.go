package handoff

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// Importer is the receiving queue.
type Importer interface {
	// Import queues an exported record durably; ErrExists (with the ID)
	// when that ID is queued or being imported.
	Import(ctx context.Context, r io.Reader) (queue.ID, error)
	Get(ctx context.Context, id queue.ID) (queue.Message, error)
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// Name is this replica's name: requests must be signed for it.
	Name string
	// Key is the shared key.
	Key []byte
	// Queue receives the messages.
	Queue Importer
	// TempDir holds request bodies until their signature checks out.
	TempDir string
	// MaxBytes bounds a request body: the largest queue record (the
	// queue's MaxBodyBytes plus envelope and history). Required.
	MaxBytes int64
	// Accepting reports whether this replica takes hand-offs now; a
	// draining replica answers 503 so the sender picks another peer.
	// Default: always.
	Accepting func() bool
	// MaxConcurrent bounds requests served at once (default 4); more get
	// 503 at once.
	MaxConcurrent int
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Server is the hand-off endpoint, an http.Handler.
type Server struct {
	o   ServerOptions
	sem chan struct{}

	mu   sync.Mutex
	seen map[string]time.Time // signatures accepted within MaxSkew, against replay
}

// maxSeen bounds the replay cache; past it requests get 503 until old
// entries age out (a hand-off sends far fewer within MaxSkew).
const maxSeen = 100000

// NewServer returns the endpoint.
func NewServer(o ServerOptions) (*Server, error) {
	if o.Name == "" || len(o.Key) < KeyBytes || o.Queue == nil || o.TempDir == "" || o.MaxBytes <= 0 {
		return nil, errors.New("handoff: Name, Key, Queue, TempDir and MaxBytes are required")
	}
	if o.Accepting == nil {
		o.Accepting = func() bool { return true }
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = 4
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{o: o, sem: make(chan struct{}, o.MaxConcurrent), seen: map[string]time.Time{}}, nil
}

// Reply is the answer to an accepted hand-off.
type Reply struct {
	ID string `json:"id"`
	// Existed: the peer had this ID already; nothing was added.
	Existed bool `json:"existed,omitempty"`
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != Path {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if !s.o.Accepting() {
		http.Error(w, "this replica is draining", http.StatusServiceUnavailable)
		return
	}
	rawTS, target, sig := credentials(r.Header)
	ts, err := strconv.ParseInt(rawTS, 10, 64)
	now := s.o.Now()
	if err != nil || now.Sub(time.Unix(ts, 0)).Abs() > MaxSkew {
		s.refuse(w, r, "missing or stale timestamp")
		return
	}
	if target != s.o.Name {
		s.refuse(w, r, "signed for another replica")
		return
	}
	if len(sig) != 2*sha256.Size {
		s.refuse(w, r, "missing signature")
		return
	}
	if r.ContentLength > s.o.MaxBytes {
		http.Error(w, "record too large", http.StatusRequestEntityTooLarge)
		return
	}
	select {
	case s.sem <- struct{}{}:
		defer func() { <-s.sem }()
	default:
		http.Error(w, "busy, try another peer or later", http.StatusServiceUnavailable)
		return
	}
	// The body goes to disk while it is hashed; nothing reaches the queue
	// before the signature over its hash checks out.
	f, err := os.CreateTemp(s.o.TempDir, "handoff-*")
	if err != nil {
		s.fail(w, "spool the record", err)
		return
	}
	defer func() { _ = f.Close(); _ = os.Remove(f.Name()) }()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r.Body, s.o.MaxBytes+1))
	switch {
	case err != nil:
		http.Error(w, "reading the record failed", http.StatusBadRequest)
		return
	case n > s.o.MaxBytes:
		http.Error(w, "record too large", http.StatusRequestEntityTooLarge)
		return
	}
	if !verify(s.o.Key, ts, s.o.Name, h.Sum(nil), sig) {
		s.refuse(w, r, "bad signature")
		return
	}
	if !s.firstUse(sig, now) {
		s.refuse(w, r, "signature already used")
		return
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		s.fail(w, "rewind the record", err)
		return
	}
	id, err := s.o.Queue.Import(r.Context(), f)
	existed := false
	if errors.Is(err, queue.ErrExists) && id != "" {
		// Idempotent by ID: success only once the ID is committed here,
		// not while another import of it may still fail.
		if _, gerr := s.o.Queue.Get(r.Context(), id); gerr == nil {
			err, existed = nil, true
		}
	}
	switch {
	case err == nil:
	case errors.Is(err, queue.ErrCorrupt), errors.Is(err, queue.ErrInvalid):
		http.Error(w, "record refused: "+err.Error(), http.StatusBadRequest)
		return
	case errors.Is(err, queue.ErrTooLarge):
		http.Error(w, "record too large", http.StatusRequestEntityTooLarge)
		return
	case errors.Is(err, queue.ErrNoSpace):
		http.Error(w, "queue full", http.StatusInsufficientStorage)
		return
	case errors.Is(err, queue.ErrExists):
		http.Error(w, "being imported, try again", http.StatusServiceUnavailable)
		return
	default:
		s.fail(w, "import", err)
		return
	}
	s.o.Logger.Info("Message handed over to this replica", "id", id, "from", r.RemoteAddr, "existed", existed)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(Reply{ID: string(id), Existed: existed})
}

// firstUse records sig and reports whether it was new; entries older than
// twice MaxSkew (beyond any timestamp still accepted) are dropped.
func (s *Server) firstUse(sig string, now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.seen[sig]; ok {
		return false
	}
	if len(s.seen) >= maxSeen {
		for k, t := range s.seen {
			if now.Sub(t) > 2*MaxSkew {
				delete(s.seen, k)
			}
		}
		if len(s.seen) >= maxSeen {
			return false
		}
	}
	s.seen[sig] = now
	return true
}

// refuse answers 401 and logs why, never the signature or key.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, why string) {
	s.o.Logger.Warn("Hand-off refused", "from", r.RemoteAddr, "reason", why)
	http.Error(w, "hand-off refused: "+why, http.StatusUnauthorized)
}

func (s *Server) fail(w http.ResponseWriter, what string, err error) {
	s.o.Logger.Error("Hand-off failed", "step", what, "error", err)
	http.Error(w, fmt.Sprintf("%s failed", what), http.StatusInternalServerError)
}

// bodyDigest hashes a record file for the signature.
func bodyDigest(f io.ReadSeeker) ([]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
