package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// kinds are the kinds config/argocd/argocd-cm-health.yaml has a health
// check for.
var kinds = []string{"SenderDomain", "RelayRoute", "TrustedNetwork"}

// argoHealthScripts reads the shipped Argo CD health checks, by kind.
func argoHealthScripts(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(api.Root, "config", "argocd", "argocd-cm-health.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	scripts := map[string]string{}
	for _, kind := range kinds {
		s := cm.Data["resource.customizations.health.postgate.io_"+kind]
		if s == "" {
			t.Fatalf("config/argocd/argocd-cm-health.yaml has no health check for %s", kind)
		}
		scripts[kind] = s
	}
	return scripts
}

// argoHealth runs a health script as Argo CD does: the object as the
// global obj, the script's returned table as the verdict.
func argoHealth(t *testing.T, script string, obj map[string]any) (status, message string) {
	t.Helper()
	L := lua.NewState()
	defer L.Close()
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		t.Fatalf("health script: %v", err)
	}
	hs, ok := L.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("the health script returned %v, want a table", L.Get(-1))
	}
	return lua.LVAsString(hs.RawGetString("status")), lua.LVAsString(hs.RawGetString("message"))
}

func toLua(L *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := L.NewTable()
		for k, e := range v {
			t.RawSetString(k, toLua(L, e))
		}
		return t
	case []any:
		t := L.NewTable()
		for _, e := range v {
			t.Append(toLua(L, e))
		}
		return t
	case string:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case bool:
		return lua.LBool(v)
	}
	return lua.LNil
}

// argoVerdicts runs the shipped health check on every object of the three
// kinds in a namespace, as the operator left them, and returns
// "Kind/name" -> status.
func argoVerdicts(t *testing.T, ns string) map[string]string {
	t.Helper()
	scripts := argoHealthScripts(t)
	out := run(t, nil, "kubectl", "get", "-n", ns, "senderdomains,relayroutes,trustednetworks", "-o", "json")
	var list struct {
		Items []map[string]any `json:"items"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]string{}
	for _, obj := range list.Items {
		kind, _ := obj["kind"].(string)
		meta, _ := obj["metadata"].(map[string]any)
		id := kind + "/" + meta["name"].(string)
		status, message := argoHealth(t, scripts[kind], obj)
		t.Logf("Argo CD health of %s %s: %s (%s)", ns, id, status, message)
		verdicts[id] = status
	}
	return verdicts
}

// argoHealthOnRealStatus checks the shipped Argo CD health checks against
// status objects the running operator wrote: the programmed tenants are
// Healthy; a second claim of a domain and a route on a signing domain are
// Stalled, so Degraded; a domain whose key Secret, and a network whose
// credentials Secret, is not there yet are Reconciling, so Progressing.
func argoHealthOnRealStatus(t *testing.T) {
	for _, ns := range []string{"team-a", "team-b"} {
		for id, status := range argoVerdicts(t, ns) {
			if status != "Healthy" {
				t.Errorf("Argo CD health of %s %s: %s, want Healthy", ns, id, status)
			}
		}
	}
	run(t, []byte(`apiVersion: v1
kind: Namespace
metadata: {name: team-c}
---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: claims-a, namespace: team-c}
spec: {domain: a.example.org}
---
apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: key-not-yet, namespace: team-c}
spec:
  domain: c.example.org
  signing: {selector: s1, algorithm: Ed25519, keySecretRef: {name: not-yet}}
---
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: on-a-signing-domain, namespace: team-c}
spec:
  senderDomainRef: {name: key-not-yet}
  target: {host: smarthost.relay.test, tlsPolicy: None}
---
apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: credentials-not-yet, namespace: team-c}
spec:
  cidrs: [192.0.2.0/24]
  authentication: {mode: Required, secretRefs: [{name: not-yet}]}
`), "kubectl", "apply", "-f", "-")
	run(t, nil, "kubectl", "wait", "-n", "team-c", "--for=condition=Stalled", "--timeout=60s", "senderdomain/claims-a")
	run(t, nil, "kubectl", "wait", "-n", "team-c", "--for=condition=Stalled", "--timeout=60s", "relayroute/on-a-signing-domain")
	run(t, nil, "kubectl", "wait", "-n", "team-c", "--for=condition=Reconciling", "--timeout=60s",
		"senderdomain/key-not-yet", "trustednetwork/credentials-not-yet")
	got := argoVerdicts(t, "team-c")
	for id, want := range map[string]string{
		"SenderDomain/claims-a":              "Degraded",
		"SenderDomain/key-not-yet":           "Progressing",
		"RelayRoute/on-a-signing-domain":     "Degraded",
		"TrustedNetwork/credentials-not-yet": "Progressing",
	} {
		if got[id] != want {
			t.Errorf("Argo CD health of team-c %s: %s, want %s", id, got[id], want)
		}
	}
	// A status older than the spec is Progressing, whatever it says.
	obj := map[string]any{"metadata": map[string]any{"generation": 2.0}, "status": map[string]any{
		"observedGeneration": 1.0, "conditions": []any{map[string]any{"type": "Ready", "status": "True", "reason": "Ready"}}}}
	if status, _ := argoHealth(t, argoHealthScripts(t)["RelayRoute"], obj); status != "Progressing" {
		t.Errorf("a stale Ready=True: %s, want Progressing", status)
	}
	if !strings.Contains(string(run(t, nil, "kubectl", "get", "-n", "team-c", "senderdomain", "claims-a", "-o", "jsonpath={.status.conditions}")), "Conflicted") {
		t.Error("the second claim is not Conflicted")
	}
}
