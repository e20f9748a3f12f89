package main

// The relay's queue-aware lifecycle (issue 9; README "Rollouts, scale-down
// and drain"):
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
//     (relay/handoff, authenticated with the key in the Secret
//     postgate-relay-handoff), within --handoff-timeout; what no peer took
//     stays on the PVC and is logged. Restarting, it keeps its queue.
//   - `postgate relay drain` does the same on demand through the loopback
//     admin API, and the relay stays up, not ready, taking no mail.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/postgate/postgate/relay/delivery"
	"github.com/postgate/postgate/relay/follow"
	"github.com/postgate/postgate/relay/handoff"
	"github.com/postgate/postgate/relay/message"
	"github.com/postgate/postgate/relay/queue"
	"github.com/postgate/postgate/relay/smtpd"
)

// lifecycleFlags are the relay's flags for drain and hand-off.
type lifecycleFlags struct {
	statefulSet      string
	handoffAddr      string
	handoffAdvertise string
	handoffTimeout   time.Duration
	spoolEphemeral   bool
}

func (l *lifecycleFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&l.statefulSet, "statefulset-name", "", "cluster mode: the relay's StatefulSet; on SIGTERM a replica whose ordinal is at or past its spec.replicas hands its queue to the other replicas (without it every SIGTERM is a restart that keeps the queue)")
	fs.StringVar(&l.handoffAddr, "handoff-bind-address", "", "cluster mode: address of the authenticated endpoint where peers hand over queued mail (off when empty)")
	fs.StringVar(&l.handoffAdvertise, "handoff-advertise-address", "", "host:port peers use to reach --handoff-bind-address (default: $POD_IP with its port, else the bound address)")
	fs.DurationVar(&l.handoffTimeout, "handoff-timeout", time.Minute, "how long a leaving replica may take to hand its queue over, after --shutdown-grace")
	fs.BoolVar(&l.spoolEphemeral, "spool-ephemeral", false, "cluster mode: the spool does not outlive the pod (an emptyDir), so every SIGTERM hands the queue over, restarts included")
}

// lifecycle drains the relay and hands its queue over.
type lifecycle struct {
	f    *relayFlags
	log  *slog.Logger
	q    *queue.Queue
	srv  *smtpd.Server
	kube kubernetes.Interface // nil standalone
	fl   *follow.Follower     // nil standalone

	draining atomic.Bool
	key      atomic.Pointer[[]byte]
	handoff  *http.Server

	mu    sync.Mutex
	drain *drainStatus // the on-demand drain, once started
	// handingOver serializes hand-offs (a SIGTERM during `relay drain`):
	// a held message is sent without a lease, and must not go twice.
	handingOver sync.Mutex
}

// drainStatus is the admin API's answer about an on-demand drain.
type drainStatus struct {
	Done  bool   `json:"done"`
	Error string `json:"error,omitempty"`
	handoff.Result
}

// startLifecycle reads (or creates) the hand-off key and serves the
// hand-off endpoint, announced on the Lease. Without the API server at
// start it keeps trying in the background until ctx ends.
func startLifecycle(ctx context.Context, f *relayFlags, logger *slog.Logger, q *queue.Queue, srv *smtpd.Server, kube kubernetes.Interface, fl *follow.Follower) (*lifecycle, error) {
	l := &lifecycle{f: f, log: logger, q: q, srv: srv, kube: kube, fl: fl}
	if kube == nil && f.handoffAddr != "" {
		logger.Warn("--handoff-bind-address ignored: the hand-off needs cluster mode (--relay-namespace)")
	}
	if kube == nil || f.handoffAddr == "" {
		return l, nil
	}
	ln, err := net.Listen("tcp", f.handoffAddr)
	if err != nil {
		return nil, fmt.Errorf("--handoff-bind-address: %w", err)
	}
	advertise := f.handoffAdvertise
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
			Name: f.podName, Key: *l.key.Load(), Queue: q, TempDir: l.tempDir(),
			MaxBytes:  f.maxMessageBytes + message.MaxPrepended + 16<<20, // envelope and history besides the body
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
		if fl != nil && !l.draining.Load() {
			fl.SetHandoffAddress(advertise)
		}
		l.mu.Unlock()
		_ = s.Serve(ln)
	}()
	return l, nil
}

func (l *lifecycle) tempDir() string { return filepath.Join(l.f.spoolDir, "staging") }

// loadKey reads or creates the shared key, once.
func (l *lifecycle) loadKey(ctx context.Context) error {
	if l.key.Load() != nil {
		return nil
	}
	if l.kube == nil {
		return errors.New("the hand-off needs cluster mode (--relay-namespace)")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	key, err := handoff.EnsureKey(ctx, l.kube.CoreV1().Secrets(l.f.relayNamespace))
	if err != nil {
		return err
	}
	l.key.Store(&key)
	return nil
}

// ready fails while the replica drains, so the Service sends no client.
func (l *lifecycle) ready() error {
	if l.draining.Load() {
		return errors.New("draining: not taking mail")
	}
	return nil
}

// beginDrain stops taking mail and hand-offs, at once.
func (l *lifecycle) beginDrain() {
	if l.draining.Swap(true) {
		return
	}
	l.srv.Drain()
	if l.fl != nil {
		l.mu.Lock()
		l.fl.SetHandoffAddress("")
		l.mu.Unlock()
	}
}

// handOver hands the queue to the live peers within ctx.
func (l *lifecycle) handOver(ctx context.Context) (handoff.Result, error) {
	l.handingOver.Lock()
	defer l.handingOver.Unlock()
	if err := l.loadKey(ctx); err != nil {
		return handoff.Result{Remaining: l.q.Stats().Messages}, err
	}
	s := &handoff.Sender{
		Key: *l.key.Load(), Queue: l.q, TempDir: l.tempDir(), Logger: l.log,
		Peers: func(ctx context.Context) ([]handoff.Peer, error) {
			return follow.Peers(ctx, l.kube, l.f.relayNamespace, l.f.podName, time.Now())
		},
	}
	start := time.Now()
	res, err := s.Drain(ctx)
	l.log.Info("Hand-off finished", "handedOff", res.HandedOff, "remaining", res.Remaining, "peers", res.Peers, "duration", time.Since(start).Round(time.Millisecond), "error", err)
	return res, err
}

// leavingForGood tells a scale-down from a restart (see the top of this
// file), and why.
func (l *lifecycle) leavingForGood(ctx context.Context) (bool, string) {
	switch {
	case l.kube == nil:
		return false, "standalone: nobody to hand over to"
	case l.f.spoolEphemeral:
		return true, "--spool-ephemeral: the queue would die with the pod"
	case l.f.statefulSet == "":
		return false, "no --statefulset-name: a restart"
	}
	i := strings.LastIndexByte(l.f.podName, '-')
	ordinal, err := strconv.Atoi(l.f.podName[i+1:])
	if i < 0 || err != nil || ordinal < 0 {
		return false, "the pod name has no ordinal: a restart"
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sts, err := l.kube.AppsV1().StatefulSets(l.f.relayNamespace).Get(ctx, l.f.statefulSet, metav1.GetOptions{})
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

// shutdown runs on SIGTERM: drain, let sessions and deliveries finish
// within --shutdown-grace, hand the queue over if leaving for good, then
// close the listeners.
func (l *lifecycle) shutdown(worker *delivery.Worker) error {
	start := time.Now()
	l.beginDrain()
	graceCtx, done := context.WithTimeout(context.Background(), l.f.shutdownGrace)
	defer done()
	if err := l.srv.Idle(graceCtx); err != nil {
		l.log.Warn("SMTP sessions still open after the grace period are closed", "error", err)
	}
	// Attempts under way finish within the grace period, or are aborted
	// and not recorded, so the schedule resumes intact wherever the
	// message goes next. That is the designed end of a slow attempt (a
	// slow MX on a rollout), not a failure: a warning, and exit status 0.
	if werr := worker.Shutdown(graceCtx); werr != nil {
		l.log.Warn("Delivery attempts still open after the grace period were aborted, not recorded; they are retried", "error", werr)
	}
	if n := l.q.Stats().Messages; n > 0 {
		leaving, why := l.leavingForGood(context.Background())
		l.log.Info("Queue at shutdown", "messages", n, "leavingForGood", leaving, "why", why)
		if leaving {
			ctx, cancel := context.WithTimeout(context.Background(), l.f.handoffTimeout)
			res, herr := l.handOver(ctx)
			cancel()
			if res.Remaining > 0 {
				l.log.Error("Messages left on this replica's volume: no live peer took them; scale back up, or attach the volume to a relay", "messages", res.Remaining, "error", herr)
			}
		}
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// Sessions still open after the grace period are closed here, as
	// designed (their messages were never acknowledged): not an error.
	var err error
	if serr := l.srv.Shutdown(closeCtx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
		err = serr
	}
	l.mu.Lock()
	if l.handoff != nil {
		_ = l.handoff.Close()
	}
	l.mu.Unlock()
	l.log.Info("Shut down", "duration", time.Since(start).Round(time.Millisecond))
	return err
}

// adminHandler adds the drain endpoint to the admin API: POST /v1/drain
// starts a drain (once; again is a no-op), GET /v1/drain reports it.
func (l *lifecycle) adminHandler(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", next)
	mux.HandleFunc("POST /v1/drain", func(w http.ResponseWriter, _ *http.Request) {
		l.mu.Lock()
		if l.drain == nil {
			l.drain = &drainStatus{}
			go l.drainNow()
		}
		l.mu.Unlock()
		l.writeDrain(w)
	})
	mux.HandleFunc("GET /v1/drain", func(w http.ResponseWriter, _ *http.Request) { l.writeDrain(w) })
	return mux
}

func (l *lifecycle) drainNow() {
	l.log.Info("Drain requested: answering 421, handing the queue over")
	l.beginDrain()
	ctx, cancel := context.WithTimeout(context.Background(), l.f.handoffTimeout)
	defer cancel()
	res, err := l.handOver(ctx)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drain.Result, l.drain.Done = res, true
	if err != nil {
		l.drain.Error = err.Error()
	}
}

func (l *lifecycle) writeDrain(w http.ResponseWriter) {
	l.mu.Lock()
	st := drainStatus{}
	if l.drain != nil {
		st = *l.drain
	}
	l.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(st)
}

const relayDrainUsage = `Usage: postgate relay drain [flags]

Drains a running relay through its admin API (loopback by default: run it
in the relay's pod, or through kubectl port-forward): the relay stops
taking mail (421 to SMTP clients, /readyz fails), hands every queued
message to the other live replicas, and reports how many moved. The relay
stays up, not ready, until it is stopped. Exit status 1 when messages are
left.

Flags:
`

// runRelayDrain is `postgate relay drain`.
func runRelayDrain(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, relayDrainUsage); fs.PrintDefaults() }
	addr := fs.String("admin-address", "127.0.0.1:8025", "host:port (or URL) of the relay's admin API")
	timeout := fs.Duration("timeout", 10*time.Minute, "how long to wait for the hand-off")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c := newQueueClient(*addr, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var st drainStatus
	err := c.do(ctx, http.MethodPost, "/v1/drain", nil, &st)
	for err == nil && !st.Done {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("not done after %s", *timeout)
		case <-time.After(500 * time.Millisecond):
			err = c.do(ctx, http.MethodGet, "/v1/drain", nil, &st)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "postgate relay drain: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "handed off %d, remaining %d\n", st.HandedOff, st.Remaining)
	for peer, n := range st.Peers {
		fmt.Fprintf(stdout, "  %s: %d\n", peer, n)
	}
	if st.Error != "" {
		fmt.Fprintf(stdout, "error: %s\n", st.Error)
	}
	if st.Remaining != 0 {
		return 1
	}
	return 0
}
