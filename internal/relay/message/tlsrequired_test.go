package message

import "testing"

// TestTLSRequiredNo: "TLS-Required: No" (RFC 8689 section 5), in any case
// and folding, marks the message; any other value or a look-alike field
// does not.
func TestTLSRequiredNo(t *testing.T) {
	tests := []struct {
		name, msg string
		want      bool
	}{
		{"none", "From: a@example.com\r\n\r\nbody\r\n", false},
		{"no", "From: a@example.com\r\nTLS-Required: No\r\n\r\nbody\r\n", true},
		{"case and spaces", "tls-required :   no  \r\nFrom: a@example.com\r\n\r\n", true},
		{"folded", "TLS-Required:\r\n No\r\nFrom: a@example.com\r\n\r\n", true},
		{"another value", "TLS-Required: Yes\r\nFrom: a@example.com\r\n\r\n", false},
		{"look-alike", "X-TLS-Required: No\r\nFrom: a@example.com\r\n\r\n", false},
		{"in the body only", "From: a@example.com\r\n\r\nTLS-Required: No\r\n", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := prepare(t, []byte(tt.msg), baseParams(t))
			if out.TLSOptional != tt.want {
				t.Errorf("TLSOptional %v, want %v", out.TLSOptional, tt.want)
			}
		})
	}
}
