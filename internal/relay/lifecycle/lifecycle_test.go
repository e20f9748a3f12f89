package lifecycle_test

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/postgate/postgate/internal/relay/lifecycle"
)

// TestLeavingForGood: how a replica tells a scale-down from a restart.
func TestLeavingForGood(t *testing.T) {
	sts := func(replicas, start int32, deleting bool) *appsv1.StatefulSet {
		s := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Namespace: "postgate-system", Name: "postgate-relay"},
			Spec: appsv1.StatefulSetSpec{Replicas: &replicas}}
		if start > 0 {
			s.Spec.Ordinals = &appsv1.StatefulSetOrdinals{Start: start}
		}
		if deleting {
			now := metav1.Now()
			s.DeletionTimestamp, s.Finalizers = &now, []string{"test"}
		}
		return s
	}
	for _, c := range []struct {
		name      string
		pod       string
		sts       *appsv1.StatefulSet // nil: none in the API
		flag      string
		ephemeral bool
		want      bool
		why       string
	}{
		{"within the replicas", "postgate-relay-1", sts(3, 0, false), "postgate-relay", false, false, "a restart"},
		{"scaled down", "postgate-relay-2", sts(2, 0, false), "postgate-relay", false, true, "a scale-down"},
		{"scaled to zero", "postgate-relay-0", sts(0, 0, false), "postgate-relay", false, true, "a scale-down"},
		{"ordinals from 1", "postgate-relay-2", sts(2, 1, false), "postgate-relay", false, false, "a restart"},
		{"ordinals from 1, past them", "postgate-relay-3", sts(2, 1, false), "postgate-relay", false, true, "a scale-down"},
		{"StatefulSet gone", "postgate-relay-0", nil, "postgate-relay", false, true, "gone"},
		{"StatefulSet being deleted", "postgate-relay-0", sts(2, 0, true), "postgate-relay", false, true, "being deleted"},
		{"no flag", "postgate-relay-2", sts(2, 0, false), "", false, false, "no --statefulset-name"},
		{"no ordinal", "relay", sts(2, 0, false), "postgate-relay", false, false, "no ordinal"},
		{"ephemeral spool", "postgate-relay-0", sts(3, 0, false), "postgate-relay", true, true, "--spool-ephemeral"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var objs []runtime.Object
			if c.sts != nil {
				objs = append(objs, c.sts)
			}
			l := lifecycle.New(lifecycle.Config{Namespace: "postgate-system", PodName: c.pod, StatefulSet: c.flag,
				SpoolEphemeral: c.ephemeral, Kube: fake.NewClientset(objs...)})
			got, why := l.LeavingForGood(context.Background())
			if got != c.want || !strings.Contains(why, c.why) {
				t.Errorf("leavingForGood = %v (%s), want %v (%s)", got, why, c.want, c.why)
			}
		})
	}
}
