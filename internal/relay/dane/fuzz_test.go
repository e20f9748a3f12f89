package dane

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

// FuzzVerify: whatever the records, Verify returns nil or an *Error with a
// result and a reason, never panics, and finds nothing usable in a set whose
// one record is unusable.
func FuzzVerify(f *testing.F) {
	p := newPKI(f)
	chains := [][]*x509.Certificate{
		chainOf(f, p.good),
		chainOf(f, p.good, p.root.Cert),
		chainOf(f, p.good)[:1],
		chainOf(f, p.expired),
		chainOf(f, p.selfSigned),
		nil,
	}
	for _, r := range []Record{
		tlsa(UsageDANEEE, SelectorSPKI, MatchingSHA2256, p.good.Leaf),
		tlsa(UsageDANEEE, SelectorCert, MatchingFull, p.good.Leaf),
		tlsa(UsageDANETA, SelectorCert, MatchingFull, p.root.Cert),
		tlsa(UsageDANETA, SelectorSPKI, MatchingFull, p.root.Cert),
		tlsa(UsageDANETA, SelectorSPKI, MatchingSHA2512, p.inter.Cert),
		{Usage: UsagePKIXEE, Selector: 9, MatchingType: 7, Data: []byte{1, 2, 3}},
	} {
		for i := range chains {
			f.Add(r.Usage, r.Selector, r.MatchingType, r.Data, uint8(i), int64(0))
		}
	}
	now := time.Now()
	f.Fuzz(func(t *testing.T, usage, selector, matching uint8, data []byte, which uint8, shift int64) {
		r := Record{Usage: usage, Selector: selector, MatchingType: matching, Data: data}
		err := Verify([]Record{r}, chains[int(which)%len(chains)], mxNames, now.Add(time.Duration(shift)))
		if err == nil {
			if !Usable(r) {
				t.Fatalf("Verify matched the unusable record %s", r)
			}
			return
		}
		var e *Error
		if !errors.As(err, &e) || e.Result == "" || e.Reason == "" {
			t.Fatalf("Verify(%s) = %#v, want an *Error with a result and a reason", r, err)
		}
		if _, known := rank[e.Result]; !known {
			t.Fatalf("Verify(%s): unknown result %q", r, e.Result)
		}
		if !Usable(r) && e.Result != ResultTLSAInvalid {
			t.Fatalf("Verify(%s) = %q for an unusable record, want %q", r, e.Result, ResultTLSAInvalid)
		}
	})
}
