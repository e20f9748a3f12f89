package controllers

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/routing"
)

// relay is one replica's acknowledgement, read from its Lease (docs/design.md
// contract 2).
type relay struct {
	name    string // the pod name
	version int64  // the table version it has loaded
	expires time.Time
}

// relays is the set of relay Leases at one instant.
type relays struct {
	live []relay
	// nextExpiry is when the first live Lease expires unless renewed; zero
	// without live relays.
	nextExpiry time.Time
}

// readRelays lists the relay Leases in namespace (from the cache, which
// watches Leases of that namespace only).
func readRelays(ctx context.Context, c client.Reader, namespace string, now time.Time) (relays, error) {
	var list coordinationv1.LeaseList
	if err := c.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return relays{}, fmt.Errorf("listing relay Leases: %w", err)
	}
	var rs relays
	for i := range list.Items {
		l := &list.Items[i]
		r, ok := relayOf(l)
		if !ok || !r.expires.After(now) {
			continue
		}
		rs.live = append(rs.live, r)
		if rs.nextExpiry.IsZero() || r.expires.Before(rs.nextExpiry) {
			rs.nextExpiry = r.expires
		}
	}
	return rs, nil
}

// relayOf reads a relay Lease; ok is false for other Leases.
func relayOf(l *coordinationv1.Lease) (relay, bool) {
	name, ok := strings.CutPrefix(l.Name, routing.RelayLeasePrefix)
	if !ok || name == "" || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return relay{}, false
	}
	v, _ := strconv.ParseInt(l.Annotations[routing.TableVersionAnnotation], 10, 64) // absent or bad: 0, no table
	d := time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second
	return relay{name: name, version: v, expires: l.Spec.RenewTime.Add(d)}, true
}

func (rs relays) versions() []int64 {
	out := make([]int64, len(rs.live))
	for i, r := range rs.live {
		out[i] = r.version
	}
	return out
}

func (rs relays) isLive(name string) bool {
	for _, r := range rs.live {
		if r.name == name {
			return true
		}
	}
	return false
}

func (rs relays) maxVersion() int64 {
	m := int64(0)
	for _, r := range rs.live {
		m = max(m, r.version)
	}
	return m
}

// firstSeen is the first published version that holds a generation of an
// object.
type firstSeen struct {
	uid        types.UID
	generation int64
	// held: the table holds the object as a held entry. A held object
	// that resolves keeps its generation, yet needs the version that
	// takes it out of hold.
	held    bool
	version int64
}

// versionBook remembers, per object, the first published version that holds
// its current generation. It lives in memory: a restarted operator rebuilds
// it from the published table (which holds the generation of each object it
// contains), so an object is then said to need that version, possibly later
// than the one that first held it: Programmed may wait for a version the
// relays would have had anyway, never the reverse.
type versionBook map[routing.ObjectKey]firstSeen

// record notes the objects of a newly published table.
func (b versionBook) record(t *routing.Table, version int64) {
	seen := make(map[routing.ObjectKey]bool, len(t.Objects()))
	for _, o := range t.Objects() {
		k := o.Key()
		seen[k] = true
		held := t.Held(k)
		if f, ok := b[k]; ok && f.uid == o.UID && f.generation == o.Generation && f.held == held {
			continue
		}
		b[k] = firstSeen{uid: o.UID, generation: o.Generation, held: held, version: version}
	}
	for k := range b {
		if !seen[k] {
			delete(b, k) // when it comes back, it comes back in a later version
		}
	}
}

// publishedVersions are the table versions the operator knows were
// published: the ranges it published itself, and every version up to the
// one it found at its start (an earlier operator's). A relay's Lease is a
// claim; a claim of a version outside them (beyond the current one, or
// skipped when versions jumped above a relay's claim) says nothing about
// what the relay runs, so it acknowledges nothing.
type publishedVersions struct {
	ranges []versionRange // ascending, disjoint
}

type versionRange struct{ from, to int64 }

// maxVersionRanges bounds the ranges kept; the oldest go first, which can
// only make an old claim count as no acknowledgement (Pending, never a
// lie).
const maxVersionRanges = 64

// add notes that versions from..to were published.
func (p *publishedVersions) add(from, to int64) {
	if n := len(p.ranges); n > 0 && from <= p.ranges[n-1].to+1 {
		p.ranges[n-1].to = max(p.ranges[n-1].to, to)
		return
	}
	p.ranges = append(p.ranges, versionRange{from, to})
	if len(p.ranges) > maxVersionRanges {
		p.ranges = p.ranges[len(p.ranges)-maxVersionRanges:]
	}
}

func (p *publishedVersions) has(v int64) bool {
	for _, r := range p.ranges {
		if r.from <= v && v <= r.to {
			return true
		}
	}
	return false
}

// acked reports whether every live relay claims a published version at
// least v.
func (rs relays) acked(v int64, published *publishedVersions) bool {
	for _, r := range rs.live {
		if r.version < v || !published.has(r.version) {
			return false
		}
	}
	return true
}

// programmed is the Programmed state of an object the verdict puts in the
// table.
func (b versionBook) programmed(o routing.ObjectRef, rs relays, published *publishedVersions, namespace string) routing.Status {
	f, ok := b[o.Key()]
	if !ok || f.generation < o.Generation || f.uid != o.UID {
		return routing.Status{Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonPending,
			Message: "Not yet in a published routing table"}
	}
	if len(rs.live) == 0 {
		return routing.Status{Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonNoRelays,
			Message: fmt.Sprintf("No relay is live (no unexpired Lease %s* in namespace %s) to load routing table version %d", routing.RelayLeasePrefix, namespace, f.version)}
	}
	if !rs.acked(f.version, published) {
		return routing.Status{Status: metav1.ConditionFalse, Reason: v1alpha1.ReasonPending,
			Message: fmt.Sprintf("Waiting for every live relay to load routing table version %d", f.version)}
	}
	return routing.Status{Status: metav1.ConditionTrue, Reason: v1alpha1.ReasonProgrammed,
		Message: fmt.Sprintf("Every live relay has loaded routing table version %d or later, which holds this generation", f.version)}
}
