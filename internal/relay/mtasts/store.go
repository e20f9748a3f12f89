package mtasts

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/postgate/postgate/internal/relay/atomicfile"
)

// store keeps one file per domain in a directory, so that a restart does
// not lose a policy (a relay that forgot its policies would deliver to an
// attacker who blocks discovery; RFC 8461 section 10.2). A file is
// <domain>.json, written whole to a temporary file, fsynced, renamed over
// the old one, then the directory fsynced: a crash leaves the old file or
// the new one, never half of either.
type store struct {
	dir  string
	root *os.Root // every name resolves inside dir
	log  *slog.Logger
}

// record is a file's content. The policy is kept as the text fetched and
// parsed again on load, so the file cannot say anything the parser would
// refuse.
type record struct {
	Version int       `json:"version"`
	Domain  string    `json:"domain"`
	ID      string    `json:"id"`
	Fetched time.Time `json:"fetched"`
	Policy  string    `json:"policy"`
}

const (
	recordVersion = 1
	fileSuffix    = ".json"
	// tmpPrefix starts the names of files being written; a domain never
	// starts with a dot, so they cannot clash with a policy file.
	tmpPrefix = ".tmp-"
)

func openStore(dir string, log *slog.Logger) (*store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("mtasts: policy directory: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("mtasts: policy directory: %w", err)
	}
	return &store{dir: dir, root: root, log: log}, nil
}

func (s *store) close() error { return s.root.Close() }

// load reads every policy file: a temporary file left by a crash is
// removed, a corrupt file logged and skipped (the next fetch replaces it),
// an expired policy removed. Over maxEntries, the policies that expire
// first are left out.
func (s *store) load(now time.Time, maxEntries int) ([]*Policy, error) {
	ents, err := fs.ReadDir(s.root.FS(), ".")
	if err != nil {
		return nil, fmt.Errorf("mtasts: reading the policy directory: %w", err)
	}
	var policies []*Policy
	for _, de := range ents {
		name := de.Name()
		switch {
		case strings.HasPrefix(name, tmpPrefix):
			if err := s.root.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
				s.log.Warn("Cannot remove a temporary MTA-STS policy file", "file", name, "error", err)
			}
			continue
		case !de.Type().IsRegular() || !strings.HasSuffix(name, fileSuffix):
			continue
		}
		p, err := s.read(name)
		if err != nil {
			s.log.Warn("Skipping a corrupt MTA-STS policy file", "file", filepath.Join(s.dir, name), "error", err)
			continue
		}
		if !now.Before(p.Expires()) {
			s.log.Info("MTA-STS policy expired", "domain", p.Domain, "id", p.ID, "mode", p.Mode, "fetched", p.Fetched)
			if err := s.remove(p.Domain); err != nil {
				s.log.Warn("Cannot remove an expired MTA-STS policy file", "domain", p.Domain, "error", err)
			}
			continue
		}
		policies = append(policies, p)
	}
	if len(policies) > maxEntries {
		sort.Slice(policies, func(i, j int) bool { return policies[i].Expires().After(policies[j].Expires()) })
		policies = policies[:maxEntries]
	}
	return policies, nil
}

// read parses one file and checks it against its name.
func (s *store) read(name string) (*Policy, error) {
	f, err := s.root.Open(name)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	// JSON escapes at most multiply the policy by six; the policy is at most
	// MaxBody, which the default keeps at 64 KiB. A file far larger than
	// any policy is not read whole.
	data, err := io.ReadAll(io.LimitReader(f, 8<<20))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, err
	}
	switch {
	case r.Version != recordVersion:
		return nil, fmt.Errorf("version %d, not %d", r.Version, recordVersion)
	case r.Domain+fileSuffix != name || !validHostname(r.Domain):
		return nil, fmt.Errorf("domain %q in a file named %s", r.Domain, name)
	}
	if !validID(r.ID) {
		return nil, fmt.Errorf("id %q is not 1 to 32 letters and digits", r.ID)
	}
	p, err := ParsePolicy(r.Policy)
	if err != nil {
		return nil, err
	}
	p.Domain, p.ID, p.Fetched = r.Domain, r.ID, r.Fetched
	return p, nil
}

// write replaces the file of p.Domain atomically.
func (s *store) write(p *Policy) error {
	data, err := json.Marshal(record{Version: recordVersion, Domain: p.Domain, ID: p.ID, Fetched: p.Fetched, Policy: p.Text})
	if err != nil {
		return err
	}
	var suffix [8]byte
	_, _ = rand.Read(suffix[:])
	return atomicfile.WriteIn(s.root, tmpPrefix+p.Domain+"-"+hex.EncodeToString(suffix[:]), p.Domain+fileSuffix, data)
}

// remove deletes the file of domain, if any, durably.
func (s *store) remove(domain string) error {
	err := s.root.Remove(domain + fileSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return atomicfile.SyncDir(s.root)
}
