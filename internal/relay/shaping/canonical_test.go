package shaping

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

// A policy with every field set, comments and a layout Canonical drops.
const everyField = `# comment
default:
  maxConnections: 8
  maxMessagesPerConnection: 50
  maxMessagesPerMinute: 300
  maxMessagesPerHour: 9000
  maxNewConnectionsPerMinute: 30
  throttleReplies:
    - {code: 421, enhancedCode: 4.7.0, text: 'too many'}
  suspension: {initial: 90s, max: 1h30m, resetAfter: 2h}
sites:
  - name: big
    match:
      sites: [big.example]
      mxHostSuffixes: [.mx.big.example, mx.other.example]
    maxConnections: 2
    maxMessagesPerConnection: 0
    maxMessagesPerMinute: 20
    maxMessagesPerHour: 600
    maxNewConnectionsPerMinute: 5
    throttleReplies:
      - enhancedCode: 4.7.28
      - text: '\[TS0[1-3]\]'
    suspension: {initial: 10m, max: 4h}
  - name: small
    match: {sites: [small.example]}
`

// Parse(Canonical(p)) is p, and Canonical is stable: the same bytes for
// the same policy whatever its comments and layout.
func TestCanonicalRoundTrip(t *testing.T) {
	for name, p := range map[string]*Policy{"shipped": DefaultPolicy(), "every field": mustParse(t, everyField)} {
		t.Run(name, func(t *testing.T) {
			b, err := p.Canonical()
			if err != nil {
				t.Fatal(err)
			}
			back, err := Parse(b)
			if err != nil {
				t.Fatalf("Parse(Canonical(p)): %v\n%s", err, b)
			}
			if !reflect.DeepEqual(back, p) {
				t.Errorf("Parse(Canonical(p)) differs from p:\n%+v\n%+v", back, p)
			}
			again, err := back.Canonical()
			if err != nil || !bytes.Equal(again, b) {
				t.Errorf("Canonical is not stable:\n%s\n%s", b, again)
			}
		})
	}
	// Layout and comments do not change the bytes; a value does.
	a, _ := mustParse(t, everyField).Canonical()
	b, _ := mustParse(t, strings.ReplaceAll(everyField, "# comment", "# another comment\n\n")).Canonical()
	c, _ := mustParse(t, strings.Replace(everyField, "maxConnections: 2", "maxConnections: 3", 1)).Canonical()
	if !bytes.Equal(a, b) || bytes.Equal(a, c) {
		t.Errorf("comments changed the bytes (%t) or a value did not (%t)", !bytes.Equal(a, b), bytes.Equal(a, c))
	}
	if !strings.Contains(string(a), `"suspension":{"initial":"1m30s","max":"1h30m0s","resetAfter":"2h0m0s"}`) {
		t.Errorf("canonical durations: %s", a)
	}
}
