package admin_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/postgate/postgate/internal/relay/admin"
)

func TestActionCheck(t *testing.T) {
	for _, tc := range []struct {
		verb    string
		ids     []string
		wantErr string
	}{
		{"list", nil, ""},
		{"list", []string{"x"}, "unexpected arguments"},
		{"flush", nil, ""},
		{"flush", []string{"a", "b"}, ""},
		{"show", []string{"a"}, ""},
		{"show", nil, "give a message ID"},
		{"show", []string{"a", "b"}, "give a message ID"},
		{"hold", []string{"a", "b"}, ""},
		{"release", nil, "give a message ID"},
		{"delete", nil, "give a message ID"},
		{"purge", nil, "unknown action"},
	} {
		a := admin.Action{Verb: tc.verb, IDs: tc.ids}
		err := a.Check()
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("%s %q: %v, want %q", tc.verb, tc.ids, err, tc.wantErr)
		}
		if errors.Is(err, admin.ErrUnknownAction) != (tc.wantErr == "unknown action") {
			t.Errorf("%s: %v is ErrUnknownAction: %t", tc.verb, err, errors.Is(err, admin.ErrUnknownAction))
		}
	}
}
