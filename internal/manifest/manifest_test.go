package manifest_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/manifest"
	"github.com/postgate/postgate/internal/testenv"
)

func newLoader(t testing.TB, opts ...manifest.Option) *manifest.Loader {
	t.Helper()
	l, err := manifest.NewLoader(opts...)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// writeFiles writes name → content into a new temporary directory and
// returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// summary is what a test expects of an object.
type summary struct {
	pos    string // base name of the file and line
	object string // Kind namespace/name
	valid  bool
}

func summarize(set *manifest.Set) []summary {
	var out []summary
	for _, o := range set.Objects {
		out = append(out, summary{
			pos:    filepath.Base(o.Pos.File) + ":" + strconv.Itoa(o.Pos.Line),
			object: o.String(),
			valid:  o.Valid(),
		})
	}
	return out
}

func equalSummaries(t *testing.T, got, want []summary) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d objects %v, want %d %v", len(got), got, len(want), want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("object %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

// TestLoadSamples loads config/samples, the files the README and the
// standalone demo use, and checks every object, its position and its
// defaults.
func TestLoadSamples(t *testing.T) {
	set, err := newLoader(t).Load(testenv.Samples(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range set.Invalid() {
		t.Errorf("%s at %s refused: %v", o, o.Pos, o.Errors.ToAggregate())
	}
	equalSummaries(t, summarize(set), []summary{
		{"postgate_v1alpha1_relayroute.yaml:5", "RelayRoute default/billing-via-smarthost", true},
		{"postgate_v1alpha1_relayroute.yaml:23", "Secret default/smarthost-credentials", true},
		{"postgate_v1alpha1_senderdomain.yaml:6", "SenderDomain default/example-com", true},
		{"postgate_v1alpha1_senderdomain.yaml:20", "SenderDomain default/billing-example-com", true},
		{"postgate_v1alpha1_trustednetwork.yaml:3", "TrustedNetwork default/loopback", true},
		{"postgate_v1alpha1_trustednetwork.yaml:14", "TrustedNetwork default/app-pods", true},
		{"postgate_v1alpha1_trustednetwork.yaml:27", "Secret default/app-mailer-credentials", true},
	})
	if len(set.Skipped) != 0 {
		t.Errorf("skipped %v, want nothing", set.Skipped)
	}

	domains := set.SenderDomains()
	if len(domains) != 2 {
		t.Fatalf("got %d SenderDomains, want 2", len(domains))
	}
	billing := domains[1]
	if billing.Spec.Domain != "billing.example.com" || billing.Spec.SourceIP != "127.0.0.2" {
		t.Errorf("billing-example-com spec: %+v", billing.Spec)
	}
	if d := billing.Spec.Delivery; d == nil || d.MaxQueueLifetime == nil || d.MaxQueueLifetime.Duration != 24*time.Hour || d.TLSPolicy != v1alpha1.TLSPolicyOpportunistic {
		t.Errorf("billing-example-com delivery: got %+v, want 24h and the default Opportunistic", d)
	}
	if s := domains[0].Spec.Signing; s == nil || s.Algorithm != v1alpha1.DKIMAlgorithmEd25519 || s.Generate == nil {
		t.Errorf("example-com signing: %+v", s)
	}

	routes := set.RelayRoutes()
	if len(routes) != 1 {
		t.Fatalf("got %d RelayRoutes, want 1", len(routes))
	}
	if tg := routes[0].Spec.Target; tg.Port != 587 || tg.TLSPolicy != v1alpha1.TLSPolicyVerify || tg.TLSMode != v1alpha1.TLSModeSTARTTLS || tg.CredentialsSecretRef == nil {
		t.Errorf("route target: %+v", tg)
	}
	if got := routes[0].Spec.SenderAddresses; len(got) != 2 || got[0] != "invoices@billing.example.com" {
		t.Errorf("route senders: %v", got)
	}

	networks := set.TrustedNetworks()
	if len(networks) != 2 || networks[1].Spec.Authentication == nil || networks[1].Spec.Authentication.Mode != v1alpha1.SMTPAuthRequired {
		t.Errorf("trusted networks: %+v", networks)
	}

	secrets := set.Secrets()
	if len(secrets) != 2 {
		t.Fatalf("got %d Secrets, want 2", len(secrets))
	}
	creds := secrets[0]
	if creds.Type != corev1.SecretTypeBasicAuth || string(creds.Data["username"]) != "postgate-billing" || string(creds.Data["password"]) != "change-me-to-the-providers-password" || creds.StringData != nil {
		t.Errorf("smarthost-credentials: type %q, data %q, stringData %q", creds.Type, creds.Data, creds.StringData)
	}

	// System metadata, as the API server sets it on create.
	seen := map[string]bool{}
	var last time.Time
	for i, o := range set.Objects {
		r := o.Resource
		if uid := string(r.GetUID()); uid == "" || seen[uid] {
			t.Errorf("%s: UID %q empty or not unique", o, uid)
		} else {
			seen[uid] = true
		}
		if ts := r.GetCreationTimestamp().Time; i > 0 && !ts.After(last) {
			t.Errorf("%s: creationTimestamp %v not after the previous object's %v", o, ts, last)
		} else {
			last = ts
		}
		wantGeneration := int64(1)
		if o.Kind == "Secret" {
			wantGeneration = 0 // core objects without a spec have no generation
		}
		if g := r.GetGeneration(); g != wantGeneration {
			t.Errorf("%s: generation %d, want %d", o, g, wantGeneration)
		}
		if gvk := r.GetObjectKind().GroupVersionKind(); gvk.Kind != o.Kind {
			t.Errorf("%s: typed object has kind %q", o, gvk.Kind)
		}
	}

	// UIDs depend on identity only, so a second load gives the same.
	again, err := newLoader(t).Load(filepath.Join(testenv.Samples(t), "postgate_v1alpha1_trustednetwork.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := again.Lookup("TrustedNetwork", "default", "app-pods"), set.Lookup("TrustedNetwork", "default", "app-pods"); a == nil || b == nil || a.Resource.GetUID() != b.Resource.GetUID() {
		t.Errorf("UID of app-pods changed across loads")
	}
}

// TestDefaults checks the schema defaults the compiler and the relay rely
// on, like api/v1alpha1's TestDefaults does against the API server.
func TestDefaults(t *testing.T) {
	dir := writeFiles(t, map[string]string{"defaults.yaml": `
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: route, namespace: defaults}
spec:
  senderDomainRef: {name: sd}
  target: {host: smarthost.relay.test}
---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: sd, namespace: defaults}
spec:
  domain: example.com
  signing: {selector: s1, generate: {}}
  delivery: {}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: tn, namespace: defaults}
spec:
  cidrs: [10.0.0.0/8]
  authentication: {secretRefs: [{name: app}]}
`})
	set, err := newLoader(t).Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range set.Invalid() {
		t.Fatalf("%s refused: %v", o, o.Errors.ToAggregate())
	}
	rr := set.RelayRoutes()[0]
	if got := rr.Spec.Target; got.Port != 25 || got.TLSPolicy != v1alpha1.TLSPolicyOpportunistic || got.TLSMode != v1alpha1.TLSModeSTARTTLS {
		t.Errorf("route target defaults: got port %d, policy %q, mode %q; want 25, Opportunistic, STARTTLS", got.Port, got.TLSPolicy, got.TLSMode)
	}
	sd := set.SenderDomains()[0]
	if sd.Spec.Signing.Algorithm != v1alpha1.DKIMAlgorithmRSA2048 {
		t.Errorf("signing algorithm default: got %q, want RSA2048", sd.Spec.Signing.Algorithm)
	}
	if d := sd.Spec.Delivery; d.MaxQueueLifetime == nil || d.MaxQueueLifetime.Duration != 48*time.Hour || d.TLSPolicy != v1alpha1.TLSPolicyOpportunistic {
		t.Errorf("delivery defaults: got %+v, want 48h and Opportunistic", d)
	}
	if tn := set.TrustedNetworks()[0]; tn.Spec.Authentication.Mode != v1alpha1.SMTPAuthRequired {
		t.Errorf("auth mode default: got %q, want Required", tn.Spec.Authentication.Mode)
	}
}

// TestNamespaces checks the default namespace and its option.
func TestNamespaces(t *testing.T) {
	doc := []byte(`
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: a}
spec: {domain: example.com}
---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: b, namespace: tenant}
spec: {domain: example.org}
`)
	for _, tt := range []struct {
		opts []manifest.Option
		want string
	}{
		{nil, "default"},
		{[]manifest.Option{manifest.WithNamespace("mail")}, "mail"},
	} {
		set, err := newLoader(t, tt.opts...).Parse("ns.yaml", doc)
		if err != nil {
			t.Fatal(err)
		}
		if got := set.Objects[0].Resource.GetNamespace(); got != tt.want {
			t.Errorf("namespace of a: got %q, want %q", got, tt.want)
		}
		if got := set.Objects[1].Resource.GetNamespace(); got != "tenant" {
			t.Errorf("namespace of b: got %q, want tenant", got)
		}
	}
}

// TestSecrets checks decoding of data and stringData and the Secret rules
// of the API server.
func TestSecrets(t *testing.T) {
	tests := []struct {
		desc      string
		name      string // "creds" when empty
		doc       string
		wantData  map[string]string
		wantType  corev1.SecretType
		wantError []string
	}{
		{
			desc:     "data in base64",
			doc:      "data: {key: c2VjcmV0}",
			wantData: map[string]string{"key": "secret"},
			wantType: corev1.SecretTypeOpaque,
		},
		{
			desc:     "stringData merged over data",
			doc:      "type: kubernetes.io/basic-auth\ndata: {username: b2xk, other: eA==}\nstringData: {username: new, password: pw}",
			wantData: map[string]string{"username": "new", "password": "pw", "other": "x"},
			wantType: corev1.SecretTypeBasicAuth,
		},
		{
			desc:      "data not in base64",
			doc:       "data: {key: 'not base64!'}",
			wantError: []string{"data[key]: Invalid value", "must be base64"},
		},
		{
			desc:      "data not a map",
			doc:       "data: [a, b]",
			wantError: []string{"data: Invalid value", "must be an object"},
		},
		{
			desc:      "basic-auth without user or password",
			doc:       "type: kubernetes.io/basic-auth\nstringData: {user: x}",
			wantError: []string{"data[username]: Required value", "data[password]: Required value"},
		},
		{
			desc:      "tls without key",
			doc:       "type: kubernetes.io/tls\nstringData: {tls.crt: x}",
			wantError: []string{"data[tls.key]: Required value"},
		},
		{
			desc:      "bad key",
			doc:       "stringData: {'a/b': x}",
			wantError: []string{"data[a/b]: Invalid value", "a valid config key must consist of"},
		},
		{
			desc:      "unknown field",
			doc:       "stringdata: {a: b}",
			wantError: []string{"stringdata: Forbidden: unknown field"},
		},
		{
			desc:      "bad name",
			name:      "Bad_Name",
			doc:       "stringData: {a: b}",
			wantError: []string{"metadata.name: Invalid value: \"Bad_Name\""},
		},
	}
	loader := newLoader(t)
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			name := tt.name
			if name == "" {
				name = "creds"
			}
			doc := "apiVersion: v1\nkind: Secret\nmetadata: {name: " + name + "}\n" + tt.doc + "\n"
			set, err := loader.Parse("secret.yaml", []byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			o := set.Objects[0]
			if len(tt.wantError) > 0 {
				got := o.Errors.ToAggregate()
				if got == nil {
					t.Fatalf("want refused with %q, got accepted", tt.wantError)
				}
				for _, want := range tt.wantError {
					if !strings.Contains(got.Error(), want) {
						t.Errorf("errors do not contain %q:\n%v", want, got)
					}
				}
				if strings.Contains(got.Error(), "not base64!") {
					t.Errorf("an error shows the secret value: %v", got)
				}
				if len(set.Secrets()) != 0 {
					t.Errorf("a refused Secret is listed by Secrets()")
				}
				return
			}
			if !o.Valid() {
				t.Fatalf("refused: %v", o.Errors.ToAggregate())
			}
			s := set.Secrets()[0]
			if s.Type != tt.wantType {
				t.Errorf("type %q, want %q", s.Type, tt.wantType)
			}
			if len(s.Data) != len(tt.wantData) || s.StringData != nil {
				t.Errorf("data %q stringData %q, want data %q", s.Data, s.StringData, tt.wantData)
			}
			for k, v := range tt.wantData {
				if string(s.Data[k]) != v {
					t.Errorf("data[%s] = %q, want %q", k, s.Data[k], v)
				}
			}
		})
	}
}

// TestFileOrder checks that input order stands in for creation time, across
// files and within a directory (files by name).
func TestFileOrder(t *testing.T) {
	sd := func(name, domain string) string {
		return "apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata: {name: " + name + "}\nspec: {domain: " + domain + "}\n---\n"
	}
	dir := writeFiles(t, map[string]string{
		"b.yaml":    sd("b1", "example.com") + sd("b2", "example.org"),
		"a.yaml":    sd("a1", "example.com"),
		"c/c.yaml":  sd("c1", "example.net"),
		"first.yml": sd("z", "example.com"),
	})
	tests := []struct {
		desc      string
		paths     []string
		recursive bool
		want      []string
	}{
		{"files as given", []string{filepath.Join(dir, "first.yml"), filepath.Join(dir, "b.yaml"), filepath.Join(dir, "a.yaml")}, false, []string{"z", "b1", "b2", "a1"}},
		{"directory by name", []string{dir}, false, []string{"a1", "b1", "b2", "z"}},
		{"recursive", []string{dir}, true, []string{"a1", "b1", "b2", "c1", "z"}},
		{"file then directory", []string{filepath.Join(dir, "c", "c.yaml"), dir}, false, []string{"c1", "a1", "b1", "b2", "z"}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var opts []manifest.Option
			if tt.recursive {
				opts = append(opts, manifest.WithRecursive())
			}
			set, err := newLoader(t, opts...).Load(tt.paths...)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			var last time.Time
			for i, d := range set.SenderDomains() {
				got = append(got, d.Name)
				if ts := d.CreationTimestamp.Time; i > 0 && !ts.After(last) {
					t.Errorf("%s created at %v, not after %v", d.Name, ts, last)
				}
				last = d.CreationTimestamp.Time
			}
			if strings.Join(got, " ") != strings.Join(tt.want, " ") {
				t.Errorf("got order %v, want %v", got, tt.want)
			}
		})
	}
}

// TestDuplicates checks that an object defined twice is an error naming
// both places, and that kind and namespace are part of the identity.
func TestDuplicates(t *testing.T) {
	const sd = "apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata: {name: x}\nspec: {domain: example.com}\n"
	dir := writeFiles(t, map[string]string{
		"one.yaml": sd + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: x}\n---\n" +
			"apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata: {name: x, namespace: other}\nspec: {domain: example.com}\n",
		"two.yaml": "# the same object again\n\n" + strings.Replace(sd, "{name: x}", "{name: x, namespace: default}", 1),
	})
	set, err := newLoader(t).Load(dir)
	if err == nil {
		t.Fatal("want an error for the duplicate")
	}
	want := filepath.Join(dir, "two.yaml") + ":5: SenderDomain default/x is defined twice: first at " + filepath.Join(dir, "one.yaml") + ":1"
	if err.Error() != want {
		t.Errorf("got error\n%v\nwant\n%s", err, want)
	}
	var e *manifest.Error
	if !errors.As(err, &e) || e.Pos.Line != 5 {
		t.Errorf("error %v: want a *manifest.Error at line 5", err)
	}
	if len(set.Objects) != 3 {
		t.Errorf("got %d objects, want the 3 distinct ones", len(set.Objects))
	}
}

// TestUnreadable checks that input that cannot be read is an error with
// the file and line of the problem.
func TestUnreadable(t *testing.T) {
	const sd = "apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata: {name: ok}\nspec: {domain: example.com}\n"
	tests := []struct {
		desc string
		doc  string
		want string // the error, after "x.yaml:"
	}{
		{"bad indentation", sd + "---\napiVersion: v1\nkind: Secret\n  metadata: x\n", "8: mapping values are not allowed in this context"},
		{"tab indentation", "# comment\n\napiVersion: v1\nkind: Secret\nmetadata:\n\tname: x\n", "6: found character that cannot start any token"},
		{"duplicate key", sd + "---\napiVersion: v1\nkind: Secret\nkind: Secret\nmetadata: {name: x}\n", "8: key \"kind\" already set in map"},
		{"unclosed flow", "apiVersion: v1\nkind: Secret\nmetadata: {name: x\n", "3: did not find expected ',' or '}'"},
		{"missing kind", sd + "---\n\napiVersion: v1\nmetadata: {name: x}\n", "7: kind is missing or not a string"},
		{"missing apiVersion", "kind: Secret\nmetadata: {name: x}\n", "1: apiVersion is missing or not a string"},
		{"missing name", "apiVersion: v1\nkind: Secret\nmetadata:\n  namespace: x\n", "3: Secret has no metadata.name"},
		{"generateName", "apiVersion: postgate.io/v1alpha1\nkind: SenderDomain\nmetadata:\n  generateName: x-\n", "3: SenderDomain has no metadata.name (generateName is not supported: objects read from files need a name)"},
		{"name not a string", "apiVersion: v1\nkind: Secret\nmetadata:\n  name: [x]\n", "4: Secret has a metadata.name that is not a string"},
		{"list document", "- a\n- b\n", "1: a document must be an object with apiVersion and kind, not a list"},
		{"scalar document", sd + "---\njust text\n", "6: a document must be an object with apiVersion and kind, not a string"},
		{"unknown version", "apiVersion: postgate.io/v1\nkind: SenderDomain\nmetadata: {name: x}\n", "2: no matches for kind \"SenderDomain\" in version \"postgate.io/v1\""},
		{"unknown postgate kind", "apiVersion: postgate.io/v1alpha1\nkind: Relay\nmetadata: {name: x}\n", "2: no matches for kind \"Relay\" in version \"postgate.io/v1alpha1\""},
		{"second document on a marker line", sd + "--- {apiVersion: v1, kind: Secret, metadata: {name: y}}\n", "5: a second document starts here: separate documents with a line of \"---\""},
		{"bad apiVersion", "apiVersion: a/b/c\nkind: X\nmetadata: {name: x}\n", "1: unexpected GroupVersion string: a/b/c"},
		{"List item not an object", "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  metadata: {name: a}\n- 5\n", "7: an item of a List must be an object"},
	}
	loader := newLoader(t)
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			_, err := loader.Parse("x.yaml", []byte(tt.doc))
			if err == nil {
				t.Fatalf("want error %q, got none", tt.want)
			}
			if got := err.Error(); got != "x.yaml:"+tt.want {
				t.Errorf("got  %q\nwant %q", got, "x.yaml:"+tt.want)
			}
		})
	}

	t.Run("missing file", func(t *testing.T) {
		_, err := loader.Load("testdata/no-such-file.yaml")
		if err == nil || err.Error() != "testdata/no-such-file.yaml: no such file or directory" {
			t.Errorf("got %v", err)
		}
	})
	t.Run("errors are joined, readable objects kept", func(t *testing.T) {
		set, err := loader.Parse("x.yaml", []byte(sd+"---\nkind: A\n---\nkind: B\n"))
		if err == nil || err.Error() != "x.yaml:6: apiVersion is missing or not a string\nx.yaml:8: apiVersion is missing or not a string" {
			t.Errorf("got %v", err)
		}
		if set == nil || len(set.Objects) != 1 {
			t.Errorf("want the readable object in the set, got %+v", set)
		}
	})
}

// TestSkipped checks that other kinds are listed, not read, and that the
// files a directory holds besides manifests are left alone.
func TestSkipped(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"app.yaml": `apiVersion: v1
kind: Namespace
metadata: {name: mail}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: mail}
spec: {replicas: 1}
---
# empty documents are skipped too
---
apiVersion: v1
kind: ConfigMap
metadata: {name: conf}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: tn}
spec: {cidrs: [10.0.0.0/8]}
`,
		"kustomization.yaml": "resources: [app.yaml]\n",
		".gitlab-ci.yml":     "stages: [test]\n",
		"README.md":          "# not a manifest\n",
		"sub/more.yaml":      "not: read\n",
		"list.json":          `{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc"}}]}`,
	})
	set, err := newLoader(t).Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var skipped []string
	for _, s := range set.Skipped {
		skipped = append(skipped, filepath.Base(s.Pos.File)+":"+strconv.Itoa(s.Pos.Line)+" "+s.APIVersion+" "+s.Kind+" "+s.Namespace+"/"+s.Name)
	}
	want := []string{
		"app.yaml:1 v1 Namespace /mail",
		"app.yaml:5 apps/v1 Deployment mail/web",
		"app.yaml:12 v1 ConfigMap /conf",
		"list.json:1 v1 Service /svc",
	}
	if strings.Join(skipped, "\n") != strings.Join(want, "\n") {
		t.Errorf("skipped:\n%s\nwant:\n%s", strings.Join(skipped, "\n"), strings.Join(want, "\n"))
	}
	equalSummaries(t, summarize(set), []summary{
		{"app.yaml:16", "TrustedNetwork default/tn", true},
		{"list.json:1", "Secret default/s", true},
	})
}

// TestMountedConfigMap reads a directory laid out as the kubelet mounts a
// ConfigMap (links to files in a hidden, versioned directory), given through
// a link, as the standalone relay in a pod reads its manifests.
func TestMountedConfigMap(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"mount/..2026_01_01/tn.yaml": "apiVersion: postgate.io/v1alpha1\nkind: TrustedNetwork\nmetadata: {name: tn}\nspec: {cidrs: [10.0.0.0/8]}\n",
		"mount/.hidden/x.yaml":       "not: read\n",
	})
	mount := filepath.Join(dir, "mount")
	for _, link := range []struct{ name, target string }{
		{filepath.Join(mount, "..data"), "..2026_01_01"},
		{filepath.Join(mount, "tn.yaml"), filepath.Join("..data", "tn.yaml")},
		{filepath.Join(mount, "gone.yaml"), filepath.Join("..data", "gone.yaml")},
		{filepath.Join(dir, "manifests"), "mount"},
	} {
		if err := os.Symlink(link.target, link.name); err != nil {
			t.Fatal(err)
		}
	}
	set, err := newLoader(t, manifest.WithRecursive()).Load(filepath.Join(dir, "manifests"))
	if want := filepath.Join(dir, "manifests", "gone.yaml") + ": no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("a dangling link: got error %v, want %s", err, want)
	}
	if len(set.Objects) != 1 {
		t.Errorf("a dangling link hides the other files: got %d objects, want 1", len(set.Objects))
	}
	if err := os.Remove(filepath.Join(mount, "gone.yaml")); err != nil {
		t.Fatal(err)
	}
	set, err = newLoader(t, manifest.WithRecursive()).Load(filepath.Join(dir, "manifests"))
	if err != nil {
		t.Fatal(err)
	}
	equalSummaries(t, summarize(set), []summary{{"tn.yaml:1", "TrustedNetwork default/tn", true}})
	if got := set.Objects[0].Pos.File; got != filepath.Join(dir, "manifests", "tn.yaml") {
		t.Errorf("position names %s, want the path as given", got)
	}
}

// TestObjectErrors checks that an object the API server would refuse is in
// the Set with its field errors, placed at the line of the field, and that
// the others are still served.
func TestObjectErrors(t *testing.T) {
	doc := `apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata:
  name: route
  labels: {app: mail}
  team: blue
spec:
  senderDomainRef: {name: sd}
  target:
    host: smarthost.relay.test
    tlsPolice: Verify
    credentialsSecretRef: {name: creds}
  senderAddresses:
  - a@example.com
  - a@example.com
status:
  observedGeneration: 3
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: tn}
spec:
  cidrs: [10.0.0.0/8]
  authentication:
    secretRefs: [{name: a}]
    mode: Sometimes
---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: ok}
spec: {domain: example.com}
status: {observedGeneration: 7}
`
	set, err := newLoader(t).Parse("x.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	type fieldError struct{ line, text string }
	tests := []struct {
		object string
		want   []fieldError
	}{
		{"RelayRoute default/route", []fieldError{
			{"6", "metadata.team: Forbidden: unknown field"},
			{"11", "spec.target.tlsPolice: Forbidden: unknown field"},
			{"15", `spec.senderAddresses[1]: Duplicate value: "a@example.com"`},
			{"9", "spec.target: Invalid value: credentialsSecretRef needs TLS: tlsPolicy Required or Verify, or tlsMode Implicit (where Opportunistic behaves as Required); credentials are never sent without TLS"},
		}},
		{"TrustedNetwork default/tn", []fieldError{
			{"26", `spec.authentication.mode: Unsupported value: "Sometimes": supported values: "Required", "Optional"`},
			{"19", "<nil>: Invalid value: null: some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"},
		}},
		{"SenderDomain default/ok", nil},
	}
	if len(set.Objects) != len(tests) {
		t.Fatalf("got %d objects, want %d", len(set.Objects), len(tests))
	}
	for i, tt := range tests {
		o := set.Objects[i]
		if o.String() != tt.object {
			t.Errorf("object %d is %s, want %s", i, o, tt.object)
			continue
		}
		var got []fieldError
		for _, e := range o.Errors {
			pos := o.FieldPos(e.Field)
			got = append(got, fieldError{strings.TrimPrefix(pos.String(), "x.yaml:"), e.Error()})
		}
		if len(got) != len(tt.want) {
			t.Errorf("%s: got errors %q, want %q", o, got, tt.want)
			continue
		}
		for j := range got {
			if got[j] != tt.want[j] {
				t.Errorf("%s: error %d: got %q, want %q", o, j, got[j], tt.want[j])
			}
		}
	}
	if got := set.Invalid(); len(got) != 2 {
		t.Errorf("Invalid() has %d objects, want 2", len(got))
	}
	if sds := set.SenderDomains(); len(sds) != 1 || sds[0].Status.ObservedGeneration != 0 {
		t.Errorf("want the valid SenderDomain, its status dropped as on create; got %+v", sds)
	}
	if len(set.RelayRoutes()) != 0 || len(set.TrustedNetworks()) != 0 {
		t.Errorf("refused objects are served")
	}
	r := set.Lookup("RelayRoute", "default", "route")
	if r == nil || r.Resource.GetLabels()["app"] != "mail" {
		t.Errorf("Lookup: got %+v", r)
	}
}
