package controllers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/follow"
	"github.com/postgate/postgate/internal/testenv"
)

// TestGeneratedRBACIsEnough runs the operator and a follower as service
// accounts bound to nothing but the roles generated into config/rbac: the
// markers grant what the code uses (and the namespaced rules, for the relay
// namespace only, suffice).
func TestGeneratedRBACIsEnough(t *testing.T) {
	c := newClient(t)
	ns := namespaces(t, c, "tenant", "system")
	tenant, system := ns[0], ns[1]
	bindGenerated(t, c, "operator", system)
	bindGenerated(t, c, "relay", system)

	opCfg := impersonate(system, "postgate-operator")
	saved := cfg
	cfg = opCfg
	startOperator(t, system, withPolicy(system, "policy"))
	cfg = saved

	f, err := follow.New(kubernetes.NewForConfigOrDie(impersonate(system, "postgate-relay")), follow.Options{
		Namespace: system, PodName: "relay-0", RenewInterval: 500 * time.Millisecond, LeaseDuration: 3 * time.Second, RetryInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runUntilStopped(t, "follower", ctx, cancel, f.Run)

	create(t, c, senderDomain(tenant, "sd", tenant+".example.com", generateKey(v1alpha1.DKIMAlgorithmEd25519)),
		trustedNetwork(tenant, "net", "192.0.2.0/24"))
	waitCond(t, c, tenant, "sd", newSD, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)
	waitCond(t, c, tenant, "net", newTN, v1alpha1.ConditionReady, metav1.ConditionTrue, v1alpha1.ReasonReady)

	// And no more: the relay lists no Secret but the index, reads none
	// outside its namespace.
	relay := kubernetes.NewForConfigOrDie(impersonate(system, "postgate-relay"))
	if _, err := relay.CoreV1().Secrets(system).List(context.Background(), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the relay may list every Secret of its namespace (err %v)", err)
	}
	keyName := v1alpha1.DefaultDKIMKeySecretName(tenant+".example.com", "s1")
	if _, err := relay.CoreV1().Secrets(tenant).Get(context.Background(), keyName, metav1.GetOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the relay may read a tenant's Secret (err %v)", err)
	}
}

func impersonate(ns, sa string) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + ns + ":" + sa}
	return c
}

// bindGenerated creates the roles of config/rbac/<which>/role.yaml, with the
// Role in ns and the ClusterRole renamed for the test, bound to the service
// account postgate-<which> of ns.
func bindGenerated(t *testing.T, c client.Client, which, ns string) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "config", "rbac", which, "role.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	subject := rbacv1.Subject{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "system:serviceaccount:" + ns + ":postgate-" + which}
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		var u unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &u.Object); err != nil || len(u.Object) == 0 {
			continue
		}
		name := "postgate-" + which + "-" + ns
		ref := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: u.GetKind(), Name: name}
		u.SetName(name)
		var binding client.Object
		switch u.GetKind() {
		case "ClusterRole":
			binding = &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name}, RoleRef: ref, Subjects: []rbacv1.Subject{subject}}
		case "Role":
			u.SetNamespace(ns)
			binding = &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}, RoleRef: ref, Subjects: []rbacv1.Subject{subject}}
		default:
			t.Fatalf("unexpected %s in %s", u.GetKind(), which)
		}
		create(t, c, &u, binding)
		t.Cleanup(func() {
			_ = c.Delete(context.Background(), binding)
			_ = c.Delete(context.Background(), &u)
		})
	}
}
