package main

// The flags of the relay's drain and hand-off (internal/relay/lifecycle), and
// `postgate relay drain`.

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/postgate/postgate/internal/relay"
	"github.com/postgate/postgate/internal/relay/admin"
	"github.com/postgate/postgate/internal/relay/lifecycle"
)

// registerLifecycleFlags registers the flags of drain and hand-off.
func registerLifecycleFlags(fs *flag.FlagSet, c *relay.Config) {
	fs.StringVar(&c.StatefulSet, "statefulset-name", "", "cluster mode: the relay's StatefulSet; on SIGTERM a replica whose ordinal is at or past its spec.replicas hands its queue to the other replicas (without it every SIGTERM is a restart that keeps the queue)")
	fs.StringVar(&c.HandoffAddr, "handoff-bind-address", "", "cluster mode: address of the authenticated endpoint where peers hand over queued mail (off when empty)")
	fs.StringVar(&c.HandoffAdvertise, "handoff-advertise-address", "", "host:port peers use to reach --handoff-bind-address (default: $POD_IP with its port, else the bound address)")
	fs.DurationVar(&c.HandoffTimeout, "handoff-timeout", time.Minute, "how long a leaving replica may take to hand its queue over, after --shutdown-grace")
	fs.BoolVar(&c.SpoolEphemeral, "spool-ephemeral", false, "cluster mode: the spool does not outlive the pod (an emptyDir), so every SIGTERM hands the queue over, restarts included")
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
	c := admin.NewClient(*addr, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	var st lifecycle.DrainStatus
	err := c.Do(ctx, http.MethodPost, "/v1/drain", nil, &st)
	for err == nil && !st.Done {
		select {
		case <-ctx.Done():
			err = fmt.Errorf("not done after %s", *timeout)
		case <-time.After(500 * time.Millisecond):
			err = c.Do(ctx, http.MethodGet, "/v1/drain", nil, &st)
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
