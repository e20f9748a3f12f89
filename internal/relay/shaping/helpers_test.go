package shaping

import (
	"testing"
	"time"

	"github.com/postgate/postgate/internal/testenv"
)

// newFakeClock returns a clock that moves only when the test moves it.
func newFakeClock() *testenv.Clock {
	return testenv.NewClock(time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC))
}

func mustParse(t *testing.T, y string) *Policy {
	t.Helper()
	p, err := Parse([]byte(y))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

var (
	googleSite = SiteOf([]string{"aspmx.l.google.com", "alt1.aspmx.l.google.com"})
	yahooSite  = SiteOf([]string{"mta5.am0.yahoodns.net"})
	otherSite  = SiteOf([]string{"mx.example.org"})
)
