package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/postgate/postgate/internal/relay/queue"
)

// Peer is a live replica that takes hand-offs.
type Peer struct {
	// Name is the replica's name (its pod), which requests are signed for.
	Name string
	// Addr is its hand-off endpoint, host:port.
	Addr string
}

// Source is the leaving replica's queue.
type Source interface {
	List(ctx context.Context, after queue.ID, limit int) ([]queue.Message, error)
	Lease(ctx context.Context, id queue.ID) (*queue.Lease, error)
	Export(ctx context.Context, id queue.ID, w io.Writer) error
	Delete(ctx context.Context, id queue.ID) error
	Stats() queue.Stats
}

// Sender hands a queue over to peers.
type Sender struct {
	Key   []byte
	Queue Source
	// Peers returns the live peers now; it is asked again for every pass.
	Peers func(ctx context.Context) ([]Peer, error)
	// TempDir holds each exported record while it is sent.
	TempDir string
	// HTTP is the client; default one with RequestTimeout per request.
	HTTP *http.Client
	// Workers send this many messages at once (default 4).
	Workers int
	Now     func() time.Time
	Logger  *slog.Logger
}

// RequestTimeout bounds one hand-off request (a record of up to the
// largest message, over the cluster network).
const RequestTimeout = 30 * time.Second

// Result counts what a Drain did.
type Result struct {
	// HandedOff messages are queued on a peer and deleted here.
	HandedOff int `json:"handedOff"`
	// Remaining messages are still queued here: no peer took them in time.
	Remaining int `json:"remaining"`
	// Peers counts hand-offs per peer name.
	Peers map[string]int `json:"peers,omitempty"`
}

// Drain hands every queued message to the peers, spread round-robin, and
// deletes each one here only after a peer answered that it is durable
// there. A message being delivered here is waited for (its lease); one
// that no peer takes stays queued here. Drain passes over the queue until
// it is empty, no peer is left, a pass moves nothing, or ctx ends.
func (s *Sender) Drain(ctx context.Context) (Result, error) {
	if s.Workers <= 0 {
		s.Workers = 4
	}
	if s.HTTP == nil {
		s.HTTP = &http.Client{Timeout: RequestTimeout}
	}
	if s.Now == nil {
		s.Now = time.Now
	}
	if s.Logger == nil {
		s.Logger = slog.New(slog.DiscardHandler)
	}
	res := Result{Peers: map[string]int{}}
	var lastErr error
	for pass := 0; ctx.Err() == nil; pass++ {
		peers, err := s.Peers(ctx)
		if err != nil {
			lastErr = fmt.Errorf("find peers: %w", err)
			break
		}
		if len(peers) == 0 {
			lastErr = errors.New("no live peer takes hand-offs")
			break
		}
		moved, busy, err := s.pass(ctx, peers, &res)
		if err != nil {
			lastErr = err
		}
		if busy == 0 && moved == 0 {
			break
		}
		if moved == 0 {
			// Only messages under delivery or refused by every peer are
			// left: wait a little for their leases, then try again.
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	res.Remaining = s.Queue.Stats().Messages
	if res.Remaining == 0 {
		lastErr = nil
	}
	return res, lastErr
}

// pass offers every queued message once; it returns how many moved and
// how many are left for another pass (busy or refused).
func (s *Sender) pass(ctx context.Context, peers []Peer, res *Result) (moved, left int, err error) {
	jobs := make(chan queue.Message)
	var mu sync.Mutex
	var next int
	var errs []error
	var wg sync.WaitGroup
	for range s.Workers {
		wg.Go(func() {
			for m := range jobs {
				mu.Lock()
				first := next
				next++
				mu.Unlock()
				peer, err := s.handOne(ctx, m, peers, first)
				mu.Lock()
				switch {
				case err == nil:
					moved++
					res.HandedOff++
					res.Peers[peer]++
				case errors.Is(err, queue.ErrNotFound):
					// delivered or deleted meanwhile: nothing to move
				default:
					left++
					if !errors.Is(err, queue.ErrBusy) {
						errs = append(errs, err)
					}
				}
				mu.Unlock()
			}
		})
	}
	var after queue.ID
	var listErr error
	for ctx.Err() == nil {
		page, err := s.Queue.List(ctx, after, queue.MaxList)
		if err != nil {
			listErr = err
			break
		}
		if len(page) == 0 {
			break
		}
		for _, m := range page {
			select {
			case jobs <- m:
			case <-ctx.Done():
			}
		}
		after = page[len(page)-1].ID
	}
	close(jobs)
	wg.Wait()
	if listErr != nil {
		errs = append(errs, listErr)
	}
	return moved, left, errors.Join(errs...)
}

// handOne moves one message: lease it (so delivery here cannot take it;
// a held message cannot be leased and is not delivered anyway), export it
// to a file, post it to the peers from the first'th in turn until one
// stores it, then delete it here.
func (s *Sender) handOne(ctx context.Context, m queue.Message, peers []Peer, first int) (string, error) {
	lease, err := s.Queue.Lease(ctx, m.ID)
	switch {
	case err == nil:
		defer lease.Close()
	case errors.Is(err, queue.ErrHeld):
	default:
		return "", err
	}
	f, err := os.CreateTemp(s.TempDir, "handoff-out-*")
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close(); _ = os.Remove(f.Name()) }()
	if err := s.Queue.Export(ctx, m.ID, f); err != nil {
		return "", err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	digest, err := bodyDigest(f)
	if err != nil {
		return "", err
	}
	var errs []error
	for i := range peers {
		p := peers[(first+i)%len(peers)]
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return "", err
		}
		err := s.post(ctx, p, f, digest, m.ID)
		if err == nil {
			if err := s.Queue.Delete(ctx, m.ID); err != nil && !errors.Is(err, queue.ErrNotFound) {
				// The peer has it; here it stays too until deleted: a
				// duplicate is possible, a loss is not.
				return "", fmt.Errorf("%s: handed to %s but not deleted here: %w", m.ID, p.Name, err)
			}
			s.Logger.Info("Message handed over", "id", m.ID, "peer", p.Name)
			return p.Name, nil
		}
		s.Logger.Warn("Hand-off to a peer failed", "id", m.ID, "peer", p.Name, "error", err)
		errs = append(errs, err)
	}
	return "", fmt.Errorf("%s: no peer took it: %w", m.ID, errors.Join(errs...))
}

// post sends one record and checks that the peer stored that ID.
func (s *Sender) post(ctx context.Context, p Peer, body *os.File, digest []byte, id queue.ID) error {
	st, err := body.Stat()
	if err != nil {
		return err
	}
	ts := s.Now().Unix()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+p.Addr+Path, io.NopCloser(body))
	if err != nil {
		return err
	}
	req.ContentLength = st.Size()
	req.Header.Set("Content-Type", "application/octet-stream")
	setCredentials(req.Header, ts, p.Name, signature(s.Key, ts, p.Name, digest))
	resp, err := s.HTTP.Do(req)
	if err != nil {
		return err
	}
	defer func() { _ = resp.Body.Close() }()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("peer answered %s: %s", resp.Status, msg)
	}
	var r Reply
	if err := json.Unmarshal(msg, &r); err != nil || r.ID != string(id) {
		return fmt.Errorf("peer answered %q for %s", msg, id)
	}
	return nil
}
