package delivery

import (
	"strings"
	"sync"
)

// maxSiteMap bounds the recipient domains siteMap remembers: a relay
// delivering to many small domains keeps the most recently resolved ones,
// at most this many (twice, briefly, while a generation turns over).
const maxSiteMap = 10000

// siteMap remembers which traffic shaping site each recipient domain last
// resolved to, so that `postgate queue sites` and `queue list --site` can
// say which queued mail waits for a site without asking DNS (docs/design.md,
// "Traffic shaping", step 7). It is bounded by two generations: lookups
// and notes go to the current one, and when it is full it becomes the
// previous one and a new one starts, so a domain not resolved for a
// generation's worth of others is forgotten. The zero value is ready.
type siteMap struct {
	mu        sync.Mutex
	cur, prev map[string]string
}

// note records that domain (A-labels, lower case) resolved to site.
func (m *siteMap) note(domain, site string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur[domain] == site {
		return
	}
	if m.cur == nil || len(m.cur) >= maxSiteMap/2 {
		m.prev, m.cur = m.cur, make(map[string]string)
	}
	m.cur[domain] = site
}

// lookup returns the site domain last resolved to, "" when not known.
func (m *siteMap) lookup(domain string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.cur[domain]; ok {
		return s
	}
	return m.prev[domain]
}

// SiteOf returns the traffic shaping site that the recipient domain
// (as in an address: any case, U-labels or A-labels) last resolved to in
// MX delivery, "" when delivery has not resolved it since it started (or
// forgot it: it remembers the latest few thousand), or shaping is off.
func (w *Worker) SiteOf(domain string) string {
	d, f := recipientDomain("x@" + strings.TrimSuffix(domain, "."))
	if f != nil {
		return ""
	}
	return w.sites.lookup(d)
}
