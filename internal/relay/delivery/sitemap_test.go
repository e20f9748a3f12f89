package delivery

import (
	"fmt"
	"testing"
)

// TestSiteMap: the domain -> site memory answers the latest site of a
// domain, stays bounded, and forgets the domains not noted for a
// generation's worth of others while keeping the recent ones.
func TestSiteMap(t *testing.T) {
	var m siteMap
	m.note("old.test", "old-site")
	m.note("gmail.test", "google.com")
	m.note("gmail.test", "google.com+example.net") // the MX set changed
	if got := m.lookup("gmail.test"); got != "google.com+example.net" {
		t.Errorf("gmail.test: %q, want the latest site", got)
	}
	for i := range maxSiteMap {
		m.note(fmt.Sprintf("d%d.test", i), "small")
	}
	if n := len(m.cur) + len(m.prev); n > maxSiteMap {
		t.Errorf("%d domains remembered, want at most %d", n, maxSiteMap)
	}
	if got := m.lookup("old.test"); got != "" {
		t.Errorf("old.test still remembered after %d others: %q", maxSiteMap, got)
	}
	if got := m.lookup(fmt.Sprintf("d%d.test", maxSiteMap-1)); got != "small" {
		t.Errorf("the latest domain: %q", got)
	}

	// Worker.SiteOf takes a domain as an address has it.
	w := &Worker{}
	w.sites.note("xn--bcher-kva.test", "buecher-site")
	for _, d := range []string{"BÜCHER.test", "xn--bcher-kva.test.", "Xn--Bcher-Kva.Test"} {
		if got := w.SiteOf(d); got != "buecher-site" {
			t.Errorf("SiteOf(%q) = %q", d, got)
		}
	}
	if got := w.SiteOf("[127.0.0.1]"); got != "" {
		t.Errorf("SiteOf of an address literal: %q", got)
	}
}
