package shaping

import (
	"net/netip"
	"slices"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// Site is where a recipient domain's mail goes: the set of MX hosts its MX
// lookup returned, and the name under which the relay shapes traffic to
// them. Every domain whose hosts have the same registrable domains shares
// a site: the thousands of domains hosted at Google Workspace are one
// site, "google.com", with one set of limits and one suspension.
type Site struct {
	// Name is the sorted registrable domains of Hosts joined with "+"
	// (see SiteOf).
	Name string
	// Hosts are the MX host names, lowercase, without the trailing dot,
	// sorted, each once.
	Hosts []string
}

// SiteOf names the site of a recipient domain from its MX hosts (or, for a
// domain without MX records, the domain itself: RFC 5321 section 5.1's
// implicit MX). The rule:
//
//   - each host name is lowercased and loses its trailing dot;
//   - its registrable domain is its public suffix plus one label, by the
//     Public Suffix List as golang.org/x/net/publicsuffix carries it:
//     aspmx.l.google.com and alt1.gmail-smtp-in.l.google.com are
//     google.com, contoso-com.mail.protection.outlook.com and
//     hotmail-com.olc.protection.outlook.com are outlook.com,
//     mta5.am0.yahoodns.net is yahoodns.net, mx01.mail.icloud.com is
//     icloud.com;
//   - a host that has no registrable domain (an address literal, a single
//     label, a public suffix itself) stands for itself;
//   - the site's name is the distinct registrable domains, sorted, joined
//     with "+": a domain with MX hosts at mx.example.net and at a backup
//     provider backup.example.org is "example.net+example.org", the same
//     name whatever order DNS returned them in.
//
// The name is made for people (logs, metrics, `postgate queue sites`) and
// for policy rules; it groups by operator of the hosts, not by recipient
// domain, because the receiving side counts connections and rates per
// sending IP across all the domains it hosts.
func SiteOf(mxHosts []string) Site {
	hosts := make([]string, 0, len(mxHosts))
	for _, h := range mxHosts {
		h = strings.TrimSuffix(strings.ToLower(strings.TrimSpace(h)), ".")
		if h != "" {
			hosts = append(hosts, h)
		}
	}
	slices.Sort(hosts)
	hosts = slices.Compact(hosts)
	names := make([]string, 0, len(hosts))
	for _, h := range hosts {
		names = append(names, registrable(h))
	}
	slices.Sort(names)
	names = slices.Compact(names)
	return Site{Name: strings.Join(names, "+"), Hosts: hosts}
}

// registrable returns host's registrable domain, or host itself when it
// has none.
func registrable(host string) string {
	if _, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return host
	}
	if !strings.Contains(host, ".") {
		return host
	}
	d, err := publicsuffix.EffectiveTLDPlusOne(host)
	if err != nil {
		return host
	}
	return d
}

// hasHostSuffix reports whether host is suffix or a subdomain of it.
// suffix has no leading dot.
func hasHostSuffix(host, suffix string) bool {
	return host == suffix || strings.HasSuffix(host, "."+suffix)
}
