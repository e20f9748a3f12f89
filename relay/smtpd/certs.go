package smtpd

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// CertReloader serves the TLS key pair from --tls-cert-file and
// --tls-key-file and picks up new files (cert-manager renewing a mounted
// Secret) without a restart: at most once a second it compares the files'
// modification times and sizes, and loads them again when they changed. A
// pair that fails to load keeps the one in use.
type CertReloader struct {
	certFile, keyFile string
	logger            *slog.Logger

	mu        sync.Mutex
	cert      *tls.Certificate
	stamp     string
	lastCheck time.Time
}

// NewCertReloader loads the key pair; it fails when the files are not a
// usable pair.
func NewCertReloader(certFile, keyFile string, logger *slog.Logger) (*CertReloader, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &CertReloader{certFile: certFile, keyFile: keyFile, logger: logger}
	stamp, err := r.fileStamp()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading the TLS key pair: %w", err)
	}
	r.cert, r.stamp, r.lastCheck = &cert, stamp, time.Now()
	return r, nil
}

func (r *CertReloader) fileStamp() (string, error) {
	var s string
	for _, f := range []string{r.certFile, r.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		s += fmt.Sprintf("%s:%d:%d;", f, fi.ModTime().UnixNano(), fi.Size())
	}
	return s, nil
}

// GetCertificate is for tls.Config.
func (r *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if time.Since(r.lastCheck) >= time.Second {
		r.lastCheck = time.Now()
		if stamp, err := r.fileStamp(); err == nil && stamp != r.stamp {
			if cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile); err != nil {
				r.logger.Error("New TLS key pair not loaded; the old one stays", "error", err)
			} else {
				r.cert, r.stamp = &cert, stamp
				r.logger.Info("Loaded a new TLS key pair", "cert", r.certFile)
			}
		}
	}
	return r.cert, nil
}

// TLSConfig is a server configuration that serves the reloaded pair, TLS 1.2
// or later (RFC 8996 retires earlier versions).
func (r *CertReloader) TLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: r.GetCertificate}
}
