package controllers

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/follow"
	"github.com/postgate/postgate/internal/testenv"
)

// Deleting the credentials Secret of a Ready RelayRoute holds the domain's
// mail on the relays, and the route and its SenderDomain say so in words
// (DeliveryHeld), never Pending; the Secret's return makes both Ready, and
// only the route's deletion sends the domain's mail by MX.
func TestRouteSecretDeletedHoldsMail(t *testing.T) {
	c, tenant, relayNS := setup(t)
	startOperator(t, relayNS)
	f, _ := startFollower(t, relayNS, "relay-a")
	domain := tenant + ".example.com"
	sender := "app@" + domain
	creds := func() *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: tenant, Name: "creds"}, Type: corev1.SecretTypeBasicAuth,
			StringData: map[string]string{"username": "relay", "password": "s3cret-password"}}
	}
	rr := relayRoute(tenant, "route", "sd")
	rr.Spec.Target.TLSPolicy = v1alpha1.TLSPolicyRequired
	rr.Spec.Target.CredentialsSecretRef = &v1alpha1.LocalObjectReference{Name: "creds"}
	create(t, c, senderDomain(tenant, "sd", domain), creds(), rr)
	waitCond(t, c, tenant, "route", newRR, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	waitRelay(t, f, sender, "routed")

	if err := c.Delete(context.Background(), creds()); err != nil {
		t.Fatal(err)
	}
	waitRelay(t, f, sender, "held")
	for _, o := range []struct {
		name string
		obj  func() client.Object
	}{{"route", func() client.Object { return newRR() }}, {"sd", func() client.Object { return newSD() }}} {
		obj := waitCond(t, c, tenant, o.name, o.obj, v1alpha1.ConditionProgrammed, metav1.ConditionFalse, v1alpha1.ReasonDeliveryHeld)
		testenv.Eventually(t, func() string {
			obj = get(t, c, tenant, o.name, o.obj())
			p := meta.FindStatusCondition(conditionsOf(obj), string(v1alpha1.ConditionProgrammed))
			if p == nil || p.Reason != string(v1alpha1.ReasonDeliveryHeld) || !strings.Contains(p.Message, "every live relay holds it") ||
				!strings.Contains(p.Message, `Secret "creds" (target credentials) not found`) {
				return "Programmed does not say that every relay holds the mail, and why: " + p.Message
			}
			return ""
		})
		if why := condIs(obj, v1alpha1.ConditionReconciling, metav1.ConditionTrue, ""); why != "" {
			t.Error(why)
		}
		if why := hasNoCondition(obj, v1alpha1.ConditionStalled); why != "" {
			t.Error(why)
		}
		if got := kstatusOf(t, obj); got != kstatus.InProgressStatus {
			t.Errorf("%s: kstatus %s while held, want InProgress", o.name, got)
		}
	}

	create(t, c, creds())
	waitCond(t, c, tenant, "route", newRR, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	// Programmed=True means the relay left the hold, not just that it
	// once loaded this generation of the route.
	if dl := f.Table().Lookup(sender); dl.Route == nil || dl.Hold != nil {
		t.Errorf("route Ready while the relay's table has %+v", dl)
	}

	if err := c.Delete(context.Background(), rr); err != nil {
		t.Fatal(err)
	}
	waitRelay(t, f, sender, "mx")
}

// waitRelay waits until the relay's table sends sender's mail the given
// way: routed, held or mx.
func waitRelay(t *testing.T, f *follow.Follower, sender, want string) {
	t.Helper()
	testenv.Eventually(t, func() string {
		tbl := f.Table()
		if tbl == nil {
			return "no table"
		}
		dl := tbl.Lookup(sender)
		got := "mx"
		switch {
		case dl.Route != nil:
			got = "routed"
		case dl.Hold != nil:
			got = "held"
		}
		if got != want {
			return "relay table: " + sender + " is " + got + ", want " + want
		}
		return ""
	})
}
