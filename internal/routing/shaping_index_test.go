package routing

import (
	"strings"
	"testing"
)

// The index names the shaping policy by hash: both ends agree on what is
// there, and a policy without its hash, a hash without its policy or a
// changed policy is refused.
func TestIndexShaping(t *testing.T) {
	policy := []byte(`{"default":{"name":"default","maxConnections":3}}`)
	var idx Index
	idx.SetShaping(policy)
	if len(idx.Shaping) != 64 {
		t.Fatalf("Shaping = %q, want a SHA-256", idx.Shaping)
	}
	if err := idx.VerifyShaping(policy); err != nil {
		t.Errorf("the published policy: %v", err)
	}
	for _, tc := range []struct {
		desc   string
		idx    Index
		policy []byte
		want   string
	}{
		{"changed", idx, []byte(`{"default":{"name":"default","maxConnections":4}}`), "does not match the index"},
		{"missing", idx, nil, "is missing"},
		{"unnamed", Index{}, policy, "names no shaping policy"},
	} {
		if err := tc.idx.VerifyShaping(tc.policy); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.desc, err, tc.want)
		}
	}
	if err := (&Index{}).VerifyShaping(nil); err != nil {
		t.Errorf("no policy: %v", err)
	}
	other := Index{Version: 9, Hash: idx.Hash}
	if other.SameContent(&idx) {
		t.Error("indexes with different policies have the same content")
	}
	other.SetShaping(policy)
	if !other.SameContent(&idx) {
		t.Error("indexes with the same table and policy differ")
	}
	idx.SetShaping(nil)
	if idx.Shaping != "" {
		t.Errorf("no policy: Shaping = %q", idx.Shaping)
	}
}
