package shaping

import (
	"slices"
	"testing"
)

func TestSiteOf(t *testing.T) {
	for _, tc := range []struct {
		hosts     []string
		name      string
		wantHosts []string
	}{
		{[]string{"aspmx.l.google.com.", "ALT1.ASPMX.L.GOOGLE.COM", "alt2.aspmx.l.google.com", "aspmx.l.google.com"}, "google.com",
			[]string{"alt1.aspmx.l.google.com", "alt2.aspmx.l.google.com", "aspmx.l.google.com"}},
		{[]string{"gmail-smtp-in.l.google.com"}, "google.com", nil},
		{[]string{"contoso-com.mail.protection.outlook.com"}, "outlook.com", nil},
		{[]string{"hotmail-com.olc.protection.outlook.com"}, "outlook.com", nil},
		{[]string{"contoso-com.r-v1.mx.microsoft"}, "mx.microsoft", nil},
		{[]string{"mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"}, "yahoodns.net", nil},
		{[]string{"mx-aol.mail.gm0.yahoodns.net"}, "yahoodns.net", nil},
		{[]string{"mx01.mail.icloud.com", "mx02.mail.icloud.com"}, "icloud.com", nil},
		{[]string{"mx00.gmx.net", "mx01.gmx.net"}, "gmx.net", nil},
		{[]string{"mx-ha03.web.de", "mx-ha02.web.de"}, "web.de", nil},
		{[]string{"mx.example.co.uk"}, "example.co.uk", nil},
		// Several registrable domains: sorted, whatever DNS's order.
		{[]string{"mx1.example.org", "backup.example.net"}, "example.net+example.org", nil},
		{[]string{"backup.example.net", "mx1.example.org", "mx2.example.org"}, "example.net+example.org", nil},
		// Hosts without a registrable domain stand for themselves.
		{[]string{"192.0.2.1"}, "192.0.2.1", nil},
		{[]string{"[2001:db8::1]"}, "[2001:db8::1]", nil},
		{[]string{"localhost"}, "localhost", nil},
		{[]string{"co.uk"}, "co.uk", nil},
		{nil, "", []string{}},
		{[]string{" ", "."}, "", []string{}},
	} {
		got := SiteOf(tc.hosts)
		if got.Name != tc.name {
			t.Errorf("SiteOf(%q).Name = %q, want %q", tc.hosts, got.Name, tc.name)
		}
		if tc.wantHosts != nil && !slices.Equal(got.Hosts, tc.wantHosts) {
			t.Errorf("SiteOf(%q).Hosts = %q, want %q", tc.hosts, got.Hosts, tc.wantHosts)
		}
	}
}

// Two recipient domains hosted by one provider are one site.
func TestSiteOfSharedProvider(t *testing.T) {
	a := SiteOf([]string{"aspmx.l.google.com", "alt1.aspmx.l.google.com"})
	b := SiteOf([]string{"alt4.aspmx.l.google.com", "aspmx.l.google.com"})
	if a.Name != b.Name {
		t.Errorf("domains at one provider: sites %q and %q, want one", a.Name, b.Name)
	}
	c := SiteOf([]string{"mx.example.org"})
	if c.Name == a.Name {
		t.Errorf("a self-hosted domain shares Google's site %q", a.Name)
	}
}
