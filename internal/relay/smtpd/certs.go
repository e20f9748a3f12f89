package smtpd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/certwatcher"
)

// MetricCertificateExpiry is the NotAfter of the certificate served for
// STARTTLS and implicit TLS, in seconds since the Unix epoch: an alert
// warns before it expires, whether or not a renewal was written to the
// files (README: Runbooks, PostgateTLSCertificateExpiring).
const MetricCertificateExpiry = "postgate_relay_tls_certificate_expiry_timestamp_seconds"

var certificateExpiryDesc = prometheus.NewDesc(MetricCertificateExpiry,
	"NotAfter of the TLS certificate the relay serves, in seconds since the Unix epoch.", nil, nil)

// CertReloader serves the TLS key pair from --tls-cert-file and
// --tls-key-file and picks up new files (cert-manager renewing a mounted
// Secret) without a restart. controller-runtime's certwatcher does the
// watching, once Start runs: inotify on both files (re-armed when a
// Secret volume swaps its symlinks), and a read every 10 seconds in case
// an event was missed. A pair that fails to load (a key that does not
// match the certificate, a half-written file) keeps the one in use; the
// watcher logs the failure through controller-runtime's logger, and the
// next change of the files is tried again.
//
// Every TLS handshake asks GetCertificate (protoConn hands TLSConfig to
// tls.Server for STARTTLS and implicit TLS alike), so a new pair is served
// from the next handshake on.
type CertReloader struct {
	certFile string
	logger   *slog.Logger
	cw       *certwatcher.CertWatcher
	// loaded is closed and replaced each time a new pair is in force:
	// tests wait on it rather than on time.
	loaded atomic.Pointer[chan struct{}]
}

// NewCertReloader loads the key pair; it fails when the files are not a
// usable pair. Start watches the files for new ones.
func NewCertReloader(certFile, keyFile string, logger *slog.Logger) (*CertReloader, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cw, err := certwatcher.New(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading the TLS key pair: %w", err)
	}
	r := &CertReloader{certFile: certFile, logger: logger, cw: cw}
	ch := make(chan struct{})
	r.loaded.Store(&ch)
	// RegisterCallback calls back at once with the pair New loaded; only
	// later calls are new pairs.
	var initial atomic.Bool
	initial.Store(true)
	cw.RegisterCallback(func(tls.Certificate) {
		if initial.Load() {
			return
		}
		logger.Info("Loaded a new TLS key pair", "cert", certFile)
		next := make(chan struct{})
		close(*r.loaded.Swap(&next))
	})
	initial.Store(false)
	return r, nil
}

// pollInterval is how often the files are read when they cannot be
// watched, certwatcher's own interval.
const pollInterval = 10 * time.Second

// Start watches the files until ctx is done. Without it the pair loaded
// at NewCertReloader stays in force. When the files cannot be watched
// (inotify watches exhausted on the node) it says so and reads them every
// pollInterval instead, so that a renewal still applies without a restart.
func (r *CertReloader) Start(ctx context.Context) error {
	err := r.cw.Start(ctx)
	if err == nil || ctx.Err() != nil {
		return nil
	}
	r.logger.Error("TLS key pair files not watched; reading them every 10 seconds", "cert", r.certFile, "error", err)
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := r.cw.ReadCertificate(); err != nil {
				r.logger.Error("New TLS key pair not loaded; the old one stays", "cert", r.certFile, "error", err)
			}
		}
	}
}

// reloaded returns a channel closed when a new pair is next in force.
func (r *CertReloader) reloaded() <-chan struct{} { return *r.loaded.Load() }

// GetCertificate is for tls.Config.
func (r *CertReloader) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cw.GetCertificate(hello)
}

var _ prometheus.Collector = (*CertReloader)(nil)

// Describe implements prometheus.Collector.
func (r *CertReloader) Describe(ch chan<- *prometheus.Desc) { ch <- certificateExpiryDesc }

// Collect implements prometheus.Collector: the expiry of the pair in
// force at the scrape, so a renewal shows at once.
func (r *CertReloader) Collect(ch chan<- prometheus.Metric) {
	c, err := r.cw.GetCertificate(nil)
	if err != nil || c == nil || len(c.Certificate) == 0 {
		return
	}
	leaf := c.Leaf
	if leaf == nil {
		// tls.LoadX509KeyPair fills Leaf since Go 1.23, unless
		// GODEBUG x509keypairleaf=0.
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return
		}
	}
	ch <- prometheus.MustNewConstMetric(certificateExpiryDesc, prometheus.GaugeValue, float64(leaf.NotAfter.Unix()))
}

// TLSConfig is a server configuration that serves the reloaded pair, TLS 1.2
// or later (RFC 8996 retires earlier versions).
func (r *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
}
