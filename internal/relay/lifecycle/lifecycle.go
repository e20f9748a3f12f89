// Package lifecycle is the relay's queue-aware lifecycle (README "Rollouts,
// scale-down and drain"): drain, hand-off, and the decision to leave for
// good. The relay package calls it in its shutdown order:
//
//   - On SIGTERM the replica drains: /readyz fails at once, the SMTP
//     listeners stay open and answer 421 4.3.2, sessions finish the
//     transaction they are in and get 421 after it (smtpd.Server.Drain),
//     then delivery attempts under way finish, all within --shutdown-grace.
//   - It then decides whether it leaves for good: with --statefulset-name
//     it reads its StatefulSet; an ordinal (the suffix of --pod-name) at or
//     past spec.ordinals.start + spec.replicas, or a StatefulSet gone or
//     being deleted, is a scale-down, anything else (a rollout, an
//     eviction, a node drain: the pod comes back with the same PVC) a
//     restart. When the API server cannot be asked, restart is assumed:
//     the queue stays on the PVC, late but never lost. With
//     --spool-ephemeral (an emptyDir spool) every SIGTERM hands over.
//   - Leaving for good, it hands every queued message to the live peers
//     (internal/relay/handoff, authenticated with the key in the Secret
//     postgate-relay-handoff), within --handoff-timeout; what no peer took
//     stays on the PVC and is logged. Restarting, it keeps its queue.
//   - `postgate relay drain` does the same on demand through the loopback
//     admin API, and the relay stays up, not ready, taking no mail.
package lifecycle

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/postgate/postgate/internal/relay/follow"
	"github.com/postgate/postgate/internal/relay/handoff"
	"github.com/postgate/postgate/internal/relay/queue"
)

// Drainer is the SMTP server as the lifecycle sees it: Drain makes it
// answer 421 from now on (smtpd.Server).
type Drainer interface{ Drain() }

// Config is what the lifecycle needs of the relay. Kube and Follower are
// nil in standalone mode: nothing to hand over to.
type Config struct {
	// Namespace is the relay namespace (cluster mode): the hand-off key's
	// Secret, the StatefulSet and the peers' Leases are there.
	Namespace string
	// PodName is this replica's name; its ordinal suffix places it in the
	// StatefulSet.
	PodName string
	// StatefulSet is the relay's StatefulSet; empty: every shutdown is a
	// restart that keeps the queue.
	StatefulSet string
	// HandoffAddr is where peers hand queued mail over (off when empty);
	// HandoffAdvertise is the host:port they use to reach it (default:
	// $POD_IP with its port, else the bound address).
	HandoffAddr, HandoffAdvertise string
	// HandoffTimeout bounds a hand-off.
	HandoffTimeout time.Duration
	// SpoolEphemeral: the spool dies with the pod, so every shutdown hands
	// the queue over.
	SpoolEphemeral bool
	// TempDir stages messages being handed over, on the spool's file
	// system.
	TempDir string
	// MaxHandoffBytes bounds one handed-over message with its envelope and
	// history.
	MaxHandoffBytes int64

	Logger   *slog.Logger
	Queue    *queue.Queue
	SMTP     Drainer
	Kube     kubernetes.Interface
	Follower *follow.Follower
}

// Lifecycle drains the relay and hands its queue over.
type Lifecycle struct {
	cfg Config
	log *slog.Logger

	draining atomic.Bool
	key      atomic.Pointer[[]byte]
	handoff  *http.Server

	mu    sync.Mutex
	drain *DrainStatus // the on-demand drain, once started
	// handingOver serializes hand-offs (a SIGTERM during `relay drain`):
	// a held message is sent without a lease, and must not go twice.
	handingOver sync.Mutex
}

// DrainStatus is the admin API's answer about an on-demand drain.
type DrainStatus struct {
	Done  bool   `json:"done"`
	Error string `json:"error,omitempty"`
	handoff.Result
}

// New returns the lifecycle of a relay; Start serves its hand-off endpoint.
func New(cfg Config) *Lifecycle {
	return &Lifecycle{cfg: cfg, log: orDiscard(cfg.Logger)}
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// Start reads (or creates) the hand-off key and serves the hand-off
// endpoint, announced on the Lease. Without the API server at start it
// keeps trying in the background until ctx ends.
func (l *Lifecycle) Start(ctx context.Context) error {
	cfg, logger := l.cfg, l.log
	if cfg.Kube == nil && cfg.HandoffAddr != "" {
		logger.Warn("--handoff-bind-address ignored: the hand-off needs cluster mode (--relay-namespace)")
	}
	if cfg.Kube == nil || cfg.HandoffAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", cfg.HandoffAddr)
	if err != nil {
		return fmt.Errorf("--handoff-bind-address: %w", err)
	}
	advertise := cfg.HandoffAdvertise
	if advertise == "" {
		_, port, _ := net.SplitHostPort(ln.Addr().String())
		advertise = ln.Addr().String()
		if ip := os.Getenv("POD_IP"); ip != "" {
			advertise = net.JoinHostPort(ip, port)
		}
	}
	go func() {
		for {
			if err := l.loadKey(ctx); err == nil {
				break
			} else {
				logger.Warn("Hand-off key not available yet: this replica takes no hand-offs", "error", err)
			}
			select {
			case <-ctx.Done():
				_ = ln.Close()
				return
			case <-time.After(10 * time.Second):
			}
		}
		hs, err := handoff.NewServer(handoff.ServerOptions{
			Name: cfg.PodName, Key: *l.key.Load(), Queue: cfg.Queue, TempDir: cfg.TempDir,
			MaxBytes:  cfg.MaxHandoffBytes,
			Accepting: func() bool { return !l.draining.Load() }, Logger: logger,
		})
		if err != nil {
			logger.Error("Hand-off endpoint not started", "error", err)
			_ = ln.Close()
			return
		}
		s := &http.Server{Handler: hs, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: handoff.RequestTimeout,
			WriteTimeout: handoff.RequestTimeout + 10*time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10}
		logger.Info("Hand-off listening", "address", ln.Addr().String(), "advertised", advertise)
		// Under l.mu, so that a drain starting now withdraws the address
		// after it is announced, not before.
		l.mu.Lock()
		l.handoff = s
		if cfg.Follower != nil && !l.draining.Load() {
			cfg.Follower.SetHandoffAddress(advertise)
		}
		l.mu.Unlock()
		_ = s.Serve(ln)
	}()
	return nil
}

// loadKey reads or creates the shared key, once.
func (l *Lifecycle) loadKey(ctx context.Context) error {
	if l.key.Load() != nil {
		return nil
	}
	if l.cfg.Kube == nil {
		return errors.New("the hand-off needs cluster mode (--relay-namespace)")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	key, err := handoff.EnsureKey(ctx, l.cfg.Kube.CoreV1().Secrets(l.cfg.Namespace))
	if err != nil {
		return err
	}
	l.key.Store(&key)
	return nil
}

// Ready fails while the replica drains, so the Service sends no client.
func (l *Lifecycle) Ready() error {
	if l.draining.Load() {
		return errors.New("draining: not taking mail")
	}
	return nil
}

// BeginDrain stops taking mail and hand-offs, at once.
func (l *Lifecycle) BeginDrain() {
	if l.draining.Swap(true) {
		return
	}
	l.cfg.SMTP.Drain()
	if l.cfg.Follower != nil {
		l.mu.Lock()
		l.cfg.Follower.SetHandoffAddress("")
		l.mu.Unlock()
	}
}

// HandOver hands the queue to the live peers within ctx.
func (l *Lifecycle) HandOver(ctx context.Context) (handoff.Result, error) {
	l.handingOver.Lock()
	defer l.handingOver.Unlock()
	if err := l.loadKey(ctx); err != nil {
		return handoff.Result{Remaining: l.cfg.Queue.Stats().Messages}, err
	}
	s := &handoff.Sender{
		Key: *l.key.Load(), Queue: l.cfg.Queue, TempDir: l.cfg.TempDir, Logger: l.log,
		Peers: func(ctx context.Context) ([]handoff.Peer, error) {
			return follow.Peers(ctx, l.cfg.Kube, l.cfg.Namespace, l.cfg.PodName, time.Now())
		},
	}
	start := time.Now()
	res, err := s.Drain(ctx)
	l.log.Info("Hand-off finished", "handedOff", res.HandedOff, "remaining", res.Remaining, "peers", res.Peers, "duration", time.Since(start).Round(time.Millisecond), "error", err)
	return res, err
}

// LeavingForGood tells a scale-down from a restart (see the package
// comment), and why.
func (l *Lifecycle) LeavingForGood(ctx context.Context) (bool, string) {
	cfg := l.cfg
	switch {
	case cfg.Kube == nil:
		return false, "standalone: nobody to hand over to"
	case cfg.SpoolEphemeral:
		return true, "--spool-ephemeral: the queue would die with the pod"
	case cfg.StatefulSet == "":
		return false, "no --statefulset-name: a restart"
	}
	i := strings.LastIndexByte(cfg.PodName, '-')
	ordinal, err := strconv.Atoi(cfg.PodName[i+1:])
	if i < 0 || err != nil || ordinal < 0 {
		return false, "the pod name has no ordinal: a restart"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sts, err := cfg.Kube.AppsV1().StatefulSets(cfg.Namespace).Get(ctx, cfg.StatefulSet, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, "the StatefulSet is gone"
	case err != nil:
		return false, "the StatefulSet cannot be read (" + err.Error() + "): a restart is assumed, the queue stays"
	case sts.DeletionTimestamp != nil:
		return true, "the StatefulSet is being deleted"
	}
	replicas, start := int32(1), int32(0)
	if sts.Spec.Replicas != nil {
		replicas = *sts.Spec.Replicas
	}
	if sts.Spec.Ordinals != nil {
		start = sts.Spec.Ordinals.Start
	}
	if int64(ordinal) >= int64(start)+int64(replicas) {
		return true, fmt.Sprintf("ordinal %d, the StatefulSet has %d replicas from %d: a scale-down", ordinal, replicas, start)
	}
	return false, fmt.Sprintf("ordinal %d within the StatefulSet's %d replicas: a restart", ordinal, replicas)
}

// Leave runs once sessions and deliveries have stopped at shutdown: when
// messages are queued and the replica leaves for good, it hands them over
// within the hand-off timeout; what no peer took is logged, and stays.
func (l *Lifecycle) Leave() {
	n := l.cfg.Queue.Stats().Messages
	if n == 0 {
		return
	}
	leaving, why := l.LeavingForGood(context.Background())
	l.log.Info("Queue at shutdown", "messages", n, "leavingForGood", leaving, "why", why)
	if !leaving {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandoffTimeout)
	res, herr := l.HandOver(ctx)
	cancel()
	if res.Remaining > 0 {
		l.log.Error("Messages left on this replica's volume: no live peer took them; scale back up, or attach the volume to a relay", "messages", res.Remaining, "error", herr)
	}
}

// Close stops the hand-off endpoint.
func (l *Lifecycle) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.handoff != nil {
		_ = l.handoff.Close()
	}
}

// AdminHandler adds the drain endpoint to the admin API: POST /v1/drain
// starts a drain (once; again is a no-op), GET /v1/drain reports it.
func (l *Lifecycle) AdminHandler(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", next)
	mux.HandleFunc("POST /v1/drain", func(w http.ResponseWriter, _ *http.Request) {
		l.mu.Lock()
		if l.drain == nil {
			l.drain = &DrainStatus{}
			go l.drainNow()
		}
		l.mu.Unlock()
		l.writeDrain(w)
	})
	mux.HandleFunc("GET /v1/drain", func(w http.ResponseWriter, _ *http.Request) { l.writeDrain(w) })
	return mux
}

func (l *Lifecycle) drainNow() {
	l.log.Info("Drain requested: answering 421, handing the queue over")
	l.BeginDrain()
	ctx, cancel := context.WithTimeout(context.Background(), l.cfg.HandoffTimeout)
	defer cancel()
	res, err := l.HandOver(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drain.Result, l.drain.Done = res, true
	if err != nil {
		l.drain.Error = err.Error()
	}
}

func (l *Lifecycle) writeDrain(w http.ResponseWriter) {
	l.mu.Lock()
	st := DrainStatus{}
	if l.drain != nil {
		st = *l.drain
	}
	l.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(st)
}
