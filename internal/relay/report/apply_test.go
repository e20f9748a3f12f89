package report

import (
	"encoding/json"
	"reflect"
	"testing"

	"sigs.k8s.io/randfill"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// TestReplicaApplyNamesWhatTheEntryNames: the apply configuration of an
// entry serializes to what the entry's JSON form does, field for field. A
// field it left out would be given up by the replica's field manager, and
// removed; a zero count written as 0 rather than left absent would be a
// field the replica owns for nothing.
func TestReplicaApplyNamesWhatTheEntryNames(t *testing.T) {
	entries := []v1alpha1.ReplicaDeliveryStatus{
		{Name: "relay-0"},
		{Name: "relay-0", Window: &v1alpha1.DeliveryWindow{}, LastFailed: &v1alpha1.DeliveryAttempt{TLS: &v1alpha1.TransportEncryption{}}},
	}
	f := randfill.NewWithSeed(1).NilChance(0.3)
	for range 500 {
		var st v1alpha1.ReplicaDeliveryStatus
		f.Fill(&st)
		entries = append(entries, st)
	}
	for _, st := range entries {
		want, got := jsonValue(t, st), jsonValue(t, replicaApply(&st))
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("the apply configuration of\n%v\nis\n%v", want, got)
		}
	}
}

// jsonValue is v's JSON form, decoded into maps and slices.
func jsonValue(t *testing.T, v any) any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
