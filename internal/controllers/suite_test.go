package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	kstatus "sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/follow"
	"github.com/postgate/postgate/internal/routing"
	"github.com/postgate/postgate/internal/testenv"
)

// One real kube-apiserver and etcd for the package. Each test works in its
// own namespaces with its own domains, runs its own operator (which compiles
// the whole cluster, as in production) and deletes its objects at the end.
var (
	cfg    *rest.Config
	scheme = runtime.NewScheme()
)

func TestMain(m *testing.M) {
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	ctrl.SetLogger(logr.Discard())
	if os.Getenv("POSTGATE_TEST_LOG") != "" {
		ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.Level(-4)})))
	}
	s, stop, err := testenv.NewAPIServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cfg = rest.CopyConfig(s.Config)
	cfg.QPS, cfg.Burst = -1, 0
	code := m.Run()
	stop()
	os.Exit(code)
}

// writes counts the API writes of a client, and reads the API reads.
type writes struct{ n, reads atomic.Int64 }

// countingReader counts the reads of the direct (API server) reader.
type countingReader struct {
	client.Reader
	w *writes
}

func (c countingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	c.w.reads.Add(1)
	return c.Reader.Get(ctx, key, obj, opts...)
}

func (c countingReader) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	c.w.reads.Add(1)
	return c.Reader.List(ctx, list, opts...)
}

// countingClient counts every write it makes, status writes included.
type countingClient struct {
	client.Client
	w *writes
}

// Get and List count the reads that bypass the cache: those of Secrets,
// metadata-only ones included (ClientOptions).
func (c countingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if isSecret(obj) {
		c.w.reads.Add(1)
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

func (c countingClient) List(ctx context.Context, list client.ObjectList, opts ...client.ListOption) error {
	if isSecret(list) {
		c.w.reads.Add(1)
	}
	return c.Client.List(ctx, list, opts...)
}

func isSecret(obj runtime.Object) bool {
	switch o := obj.(type) {
	case *corev1.Secret, *corev1.SecretList:
		return true
	case *metav1.PartialObjectMetadata:
		return o.Kind == "Secret"
	case *metav1.PartialObjectMetadataList:
		return o.Kind == "SecretList"
	}
	return false
}

func (c countingClient) Create(ctx context.Context, obj client.Object, opts ...client.CreateOption) error {
	c.w.n.Add(1)
	return c.Client.Create(ctx, obj, opts...)
}

func (c countingClient) Update(ctx context.Context, obj client.Object, opts ...client.UpdateOption) error {
	c.w.n.Add(1)
	return c.Client.Update(ctx, obj, opts...)
}

func (c countingClient) Patch(ctx context.Context, obj client.Object, p client.Patch, opts ...client.PatchOption) error {
	c.w.n.Add(1)
	return c.Client.Patch(ctx, obj, p, opts...)
}

func (c countingClient) Delete(ctx context.Context, obj client.Object, opts ...client.DeleteOption) error {
	c.w.n.Add(1)
	return c.Client.Delete(ctx, obj, opts...)
}

func (c countingClient) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.ApplyOption) error {
	c.w.n.Add(1)
	return c.Client.Apply(ctx, obj, opts...)
}

func (c countingClient) Status() client.SubResourceWriter {
	return countingStatus{c.Client.Status(), c.w}
}

type countingStatus struct {
	client.SubResourceWriter
	w *writes
}

func (c countingStatus) Patch(ctx context.Context, obj client.Object, p client.Patch, opts ...client.SubResourcePatchOption) error {
	c.w.n.Add(1)
	return c.SubResourceWriter.Patch(ctx, obj, p, opts...)
}

func (c countingStatus) Update(ctx context.Context, obj client.Object, opts ...client.SubResourceUpdateOption) error {
	c.w.n.Add(1)
	return c.SubResourceWriter.Update(ctx, obj, opts...)
}

func (c countingStatus) Apply(ctx context.Context, obj runtime.ApplyConfiguration, opts ...client.SubResourceApplyOption) error {
	c.w.n.Add(1)
	return c.SubResourceWriter.Apply(ctx, obj, opts...)
}

// operator is a running operator of one test.
type operator struct {
	r      *Reconciler
	writes *writes
	stop   func()
}

type operatorOpt func(*Options, *Reconciler)

// startOperator runs the operator with its own manager (no leader election,
// metrics and probes off) until stop or the end of the test.
func startOperator(t testing.TB, relayNS string, opts ...operatorOpt) *operator {
	t.Helper()
	o := Options{RelayNamespace: relayNS, StatusWorkers: 8}
	for _, opt := range opts {
		opt(&o, nil)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  CacheOptions(o),
		Client:                 ClientOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Controller:             ctrlConfig(),
	})
	if err != nil {
		t.Fatal(err)
	}
	w := &writes{}
	r, err := NewReconciler(countingClient{mgr.GetClient(), w}, mgr.GetCache(), countingReader{mgr.GetAPIReader(), w}, mgr.GetEventRecorder("postgate-operator"), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range opts {
		opt(&o, r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.SetupWithManager(ctx, mgr); err != nil {
		t.Fatal(err)
	}
	stop := runUntilStopped(t, "operator", ctx, cancel, mgr.Start)
	return &operator{r: r, writes: w, stop: stop}
}

func withPolicy(namespace, name string) operatorOpt {
	return func(o *Options, _ *Reconciler) { o.PolicyNamespace, o.PolicyName = namespace, name }
}

func withAfterShards(fn func() error) operatorOpt {
	return func(_ *Options, r *Reconciler) {
		if r != nil {
			r.pub.afterShards = fn
		}
	}
}

// runUntilStopped runs run(ctx) in a goroutine; the returned stop (also
// called when the test ends) cancels ctx and waits, bounded, for run to
// return.
func runUntilStopped(t testing.TB, what string, ctx context.Context, cancel func(), run func(context.Context) error) (stop func()) {
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("%s: %v", what, err)
				}
			case <-time.After(testenv.WaitTimeout):
				t.Errorf("%s did not stop within %s", what, testenv.WaitTimeout)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// startFollower runs a real follower in the relay namespace with short
// Lease intervals.
func startFollower(t testing.TB, relayNS, pod string) (*follow.Follower, func()) {
	t.Helper()
	cs := kubernetes.NewForConfigOrDie(cfg)
	f, err := follow.New(cs, follow.Options{
		Namespace: relayNS, PodName: pod, SpoolDir: t.TempDir(),
		RenewInterval: 500 * time.Millisecond, LeaseDuration: 3 * time.Second, RetryInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return f, runUntilStopped(t, "follower", ctx, cancel, f.Run)
}

// newClient is a direct (uncached) client for the test's own reads and
// writes.
func newClient(t testing.TB) client.Client {
	t.Helper()
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var nsCounter atomic.Int64

// namespaces creates fresh namespaces named after the prefix, and deletes
// the postgate objects in them when the test ends (envtest runs no namespace
// controller, so deleting the namespace would leave them).
func namespaces(t testing.TB, c client.Client, prefixes ...string) []string {
	t.Helper()
	var out []string
	for _, p := range prefixes {
		name := fmt.Sprintf("%s-%d-%d", p, os.Getpid()%1000, nsCounter.Add(1))
		if err := c.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
			t.Fatal(err)
		}
		out = append(out, name)
		t.Cleanup(func() {
			ctx := context.Background()
			for _, obj := range []client.Object{&v1alpha1.SenderDomain{}, &v1alpha1.RelayRoute{}, &v1alpha1.TrustedNetwork{}, &corev1.Secret{}, &coordinationv1.Lease{}} {
				_ = c.DeleteAllOf(ctx, obj, client.InNamespace(name))
			}
		})
	}
	return out
}

// ctrlConfig lets each test's manager register the controller again.
func ctrlConfig() config.Controller {
	skip := true
	return config.Controller{SkipNameValidation: &skip}
}

// get reads an object, failing the test on error.
func get[T client.Object](t testing.TB, c client.Client, ns, name string, obj T) T {
	t.Helper()
	if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

func conditionsOf(obj client.Object) []metav1.Condition { return obj.(v1alpha1.Object).GetConditions() }

// condIs describes how cond differs from the wanted status and reason, ""
// when it does not. It also checks that the condition is for the object's
// current generation.
func condIs(obj client.Object, typ v1alpha1.ConditionType, status metav1.ConditionStatus, reason v1alpha1.Reason) string {
	c := meta.FindStatusCondition(conditionsOf(obj), string(typ))
	switch {
	case c == nil:
		return fmt.Sprintf("%s %s: no %s condition (conditions %v)", obj.GetObjectKind().GroupVersionKind().Kind, obj.GetName(), typ, conditionsOf(obj))
	case c.Status != status || (reason != "" && c.Reason != string(reason)):
		return fmt.Sprintf("%s: %s=%s reason %s (%s), want %s %s", obj.GetName(), typ, c.Status, c.Reason, c.Message, status, reason)
	case c.ObservedGeneration != obj.GetGeneration():
		return fmt.Sprintf("%s: %s has observedGeneration %d, want %d", obj.GetName(), typ, c.ObservedGeneration, obj.GetGeneration())
	case obj.(v1alpha1.Object).GetObservedGeneration() != obj.GetGeneration():
		return fmt.Sprintf("%s: status.observedGeneration %d, want %d", obj.GetName(), obj.(v1alpha1.Object).GetObservedGeneration(), obj.GetGeneration())
	}
	return ""
}

func hasNoCondition(obj client.Object, typ v1alpha1.ConditionType) string {
	if c := meta.FindStatusCondition(conditionsOf(obj), string(typ)); c != nil {
		return fmt.Sprintf("%s: unexpected %s=%s %s", obj.GetName(), typ, c.Status, c.Reason)
	}
	return ""
}

// waitCond waits until the object's condition has the status and reason.
func waitCond[T client.Object](t testing.TB, c client.Client, ns, name string, newObj func() T, typ v1alpha1.ConditionType, status metav1.ConditionStatus, reason v1alpha1.Reason) T {
	t.Helper()
	var obj T
	testenv.Eventually(t, func() string {
		obj = newObj()
		if err := c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, obj); err != nil {
			return err.Error()
		}
		return condIs(obj, typ, status, reason)
	})
	return obj
}

func newSD() *v1alpha1.SenderDomain   { return &v1alpha1.SenderDomain{} }
func newRR() *v1alpha1.RelayRoute     { return &v1alpha1.RelayRoute{} }
func newTN() *v1alpha1.TrustedNetwork { return &v1alpha1.TrustedNetwork{} }

// kstatusOf computes the kstatus of obj as Flux and Argo CD do: on the
// unstructured object.
func kstatusOf(t testing.TB, obj client.Object) kstatus.Status {
	t.Helper()
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(obj)
	if err != nil {
		t.Fatal(err)
	}
	res, err := kstatus.Compute(&unstructured.Unstructured{Object: m})
	if err != nil {
		t.Fatal(err)
	}
	return res.Status
}

// readIndex reads the index published in ns.
func readIndex(t testing.TB, c client.Client, ns string) *routing.Index {
	t.Helper()
	idxSecret := get(t, c, ns, routing.IndexSecretName, &corev1.Secret{})
	var idx routing.Index
	if err := json.Unmarshal(idxSecret.Data[routing.IndexDataKey], &idx); err != nil {
		t.Fatal(err)
	}
	return &idx
}

// publishedTable reads and decodes the table published in ns. A shard that
// a newer version made unused may be deleted between the reads of the index
// and of the shard: it then reads again.
func publishedTable(t testing.TB, c client.Client, ns string) *routing.Table {
	t.Helper()
	for range 10 {
		idx := readIndex(t, c, ns)
		shards := map[string][]byte{}
		var err error
		for _, ref := range idx.Shards {
			s := &corev1.Secret{}
			if err = c.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: ref.Name}, s); err != nil {
				break
			}
			shards[ref.Name] = s.Data[routing.ShardDataKey]
		}
		if apierrors.IsNotFound(err) {
			continue // replaced meanwhile
		} else if err != nil {
			t.Fatal(err)
		}
		tbl, err := routing.Decode(idx, shards, nil)
		if err != nil {
			t.Fatal(err)
		}
		return tbl
	}
	t.Fatal("the published table changed under each of 10 reads")
	return nil
}

// Fixtures, built with option functions.

func senderDomain(ns, name, domain string, opts ...func(*v1alpha1.SenderDomain)) *v1alpha1.SenderDomain {
	sd := &v1alpha1.SenderDomain{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1alpha1.SenderDomainSpec{Domain: v1alpha1.DomainName(domain)}}
	for _, o := range opts {
		o(sd)
	}
	return sd
}

func generateKey(alg v1alpha1.DKIMAlgorithm) func(*v1alpha1.SenderDomain) {
	return func(sd *v1alpha1.SenderDomain) {
		sd.Spec.Signing = &v1alpha1.DKIMSigning{Selector: "s1", Algorithm: alg, Generate: &v1alpha1.DKIMKeyGeneration{}}
	}
}

func relayRoute(ns, name, sd string) *v1alpha1.RelayRoute {
	return &v1alpha1.RelayRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1alpha1.RelayRouteSpec{
		SenderDomainRef: v1alpha1.LocalObjectReference{Name: sd},
		Target:          v1alpha1.RelayTarget{Host: "smarthost.relay.test", Port: 587},
	}}
}

func trustedNetwork(ns, name, cidr string, authSecrets ...string) *v1alpha1.TrustedNetwork {
	tn := &v1alpha1.TrustedNetwork{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: v1alpha1.TrustedNetworkSpec{CIDRs: []v1alpha1.CIDR{v1alpha1.CIDR(cidr)}}}
	if len(authSecrets) > 0 {
		tn.Spec.Authentication = &v1alpha1.SMTPAuthentication{}
		for _, s := range authSecrets {
			tn.Spec.Authentication.SecretRefs = append(tn.Spec.Authentication.SecretRefs, v1alpha1.LocalObjectReference{Name: s})
		}
	}
	return tn
}

// setup gives a test a client and fresh tenant and relay namespaces.
func setup(t testing.TB) (c client.Client, tenant, relayNS string) {
	t.Helper()
	c = newClient(t)
	ns := namespaces(t, c, "tenant", "relay")
	return c, ns[0], ns[1]
}

// update writes obj's spec. The operator writes the status meanwhile, which
// moves the resourceVersion: on a conflict, update takes the latest
// resourceVersion and tries again (an update of the object never changes its
// status, so nothing of the operator's is lost).
func update(t testing.TB, c client.Client, obj client.Object) {
	t.Helper()
	for range 10 {
		err := c.Update(context.Background(), obj)
		if err == nil {
			return
		}
		if !apierrors.IsConflict(err) {
			t.Fatalf("updating %s: %v", obj.GetName(), err)
		}
		latest := obj.DeepCopyObject().(client.Object)
		if err := c.Get(context.Background(), client.ObjectKeyFromObject(obj), latest); err != nil {
			t.Fatal(err)
		}
		obj.SetResourceVersion(latest.GetResourceVersion())
	}
	t.Fatalf("updating %s: still conflicting after 10 tries", obj.GetName())
}

func create(t testing.TB, c client.Client, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := c.Create(context.Background(), o); err != nil {
			t.Fatalf("creating %s: %v", o.GetName(), err)
		}
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
