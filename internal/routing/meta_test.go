package routing

import (
	"strings"
	"testing"

	"github.com/postgate/postgate/api/v1alpha1"
)

func annotated(ann, labels map[string]string) sdOpt {
	return func(sd *v1alpha1.SenderDomain) { sd.Annotations, sd.Labels = ann, labels }
}

// TestNotifyMeta: the account and customer number annotations (or labels)
// reach the relay's table through Encode and Decode; a table without them
// encodes as before; values that cannot go into a notification as written
// are refused, naming the field.
func TestNotifyMeta(t *testing.T) {
	in := tenantFixture(t)
	plain := Compile(in, nil).Table
	plainIdx, plainShards, err := Encode(plain, 1, 0)
	if err != nil {
		t.Fatal(err)
	}

	in.SenderDomains[1] = senderDomain("app", "billing", "billing.example.com", 0, sourceIP("127.0.0.2"),
		webhook("https://hooks.example.com/x", "hook"),
		annotated(map[string]string{AccountKey: "m4a_test_user", "other": "x"}, map[string]string{AccountKey: "label-loses", CustomerNoKey: "99999"}))
	tbl := Compile(in, nil).Table
	idx, shards, err := Encode(tbl, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(idx, shardMap(shards), NewCache())
	if err != nil {
		t.Fatal(err)
	}
	for name, tb := range map[string]*Table{"compiled": tbl, "decoded": got} {
		d := tb.Domain("billing.example.com")
		if d == nil || d.Account != "m4a_test_user" || d.CustomerNo != "99999" || d.Namespace != "app" {
			t.Errorf("%s: %+v", name, d)
		}
		if d := tb.Domain("example.com"); d == nil || d.Account != "" || d.CustomerNo != "" {
			t.Errorf("%s: example.com: %+v", name, d)
		}
	}
	// A table without them encodes as before: no new keys, same hash for
	// the same input.
	for _, sh := range plainShards {
		raw, err := gunzip(sh.Data)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), `"account"`) || strings.Contains(string(raw), `"customerNo"`) {
			t.Errorf("a table without the annotations encodes them: %s", raw)
		}
	}
	if again, _, _ := Encode(Compile(tenantFixture(t), nil).Table, 1, 0); again.Hash != plainIdx.Hash {
		t.Error("encoding is not stable")
	}

	for _, tc := range []struct {
		ann, labels map[string]string
		want        string
	}{
		{ann: map[string]string{AccountKey: strings.Repeat("a", 129)}, want: "metadata.annotations[postgate.io/account]: 129 bytes"},
		{ann: map[string]string{CustomerNoKey: "99\n999"}, want: "metadata.annotations[postgate.io/customer-no]"},
		{labels: map[string]string{CustomerNoKey: "9\x00"}, want: "metadata.labels[postgate.io/customer-no]"},
		{ann: map[string]string{AccountKey: "\xff"}, want: "not UTF-8"},
	} {
		in.SenderDomains[1] = senderDomain("app", "billing", "billing.example.com", 0, annotated(tc.ann, tc.labels))
		res := Compile(in, nil)
		var v *Verdict
		for i := range res.Verdicts {
			if res.Verdicts[i].Object.Name == "billing" && res.Verdicts[i].Object.Kind == KindSenderDomain {
				v = &res.Verdicts[i]
			}
		}
		if v == nil || v.Accepted.Reason != v1alpha1.ReasonInvalid || !strings.Contains(v.Accepted.Message, tc.want) {
			t.Errorf("%v %v: %+v, want Invalid with %q", tc.ann, tc.labels, v, tc.want)
		}
	}
	// Unicode is fine: a tenant's name may be in any script.
	in.SenderDomains[1] = senderDomain("app", "billing", "billing.example.com", 0, annotated(map[string]string{AccountKey: "Zürich Bücher"}, nil))
	if d := Compile(in, nil).Table.Domain("billing.example.com"); d == nil || d.Account != "Zürich Bücher" {
		t.Errorf("unicode account: %+v", d)
	}
}
