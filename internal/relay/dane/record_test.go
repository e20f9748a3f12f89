package dane

import (
	"bytes"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestRecordString(t *testing.T) {
	for _, tt := range []struct {
		record Record
		want   string
	}{
		{Record{UsageDANEEE, SelectorSPKI, MatchingSHA2256, []byte{0xab, 0x01, 0xff}}, "3 1 1 AB01FF"},
		{Record{UsageDANETA, SelectorCert, MatchingFull, []byte{0}}, "2 0 0 00"},
		{Record{UsagePKIXTA, 7, 9, nil}, "0 7 9 "},
	} {
		if got := tt.record.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
	// In a reason, a whole certificate is cut short.
	long := Record{UsageDANETA, SelectorCert, MatchingFull, bytes.Repeat([]byte{0xcd}, 500)}
	if got := brief(long); got != "2 0 0 CDCDCDCDCDCDCDCD..." {
		t.Errorf("brief = %q", got)
	}
}

func TestFromDNS(t *testing.T) {
	digest := strings.Repeat("0123456789abcdef", 4)
	rr, err := dns.NewRR("_25._tcp.mx.example.net. 300 IN TLSA 3 1 1 " + digest)
	if err != nil {
		t.Fatal(err)
	}
	handMade := &dns.TLSA{Usage: 2, Selector: 0, MatchingType: 1, Certificate: "not hex"}
	got := FromDNS([]*dns.TLSA{rr.(*dns.TLSA), nil, handMade})
	if len(got) != 2 {
		t.Fatalf("FromDNS returned %d records, want 2 (the nil one skipped): %v", len(got), got)
	}
	if want := "3 1 1 " + strings.ToUpper(digest); got[0].String() != want || !Usable(got[0]) {
		t.Errorf("FromDNS = %s (usable %v), want %s, usable", got[0], Usable(got[0]), want)
	}
	if got[1].Usage != 2 || got[1].MatchingType != 1 || got[1].Data != nil || Usable(got[1]) {
		t.Errorf("FromDNS of data that is not hex = %+v, usable %v; want empty data, unusable", got[1], Usable(got[1]))
	}
}
