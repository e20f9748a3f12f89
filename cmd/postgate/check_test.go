package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	checkSD = `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: %NAME%, namespace: %NS%}
spec: {domain: %DOMAIN%}
`
	checkTN = `apiVersion: postgate.io/v1alpha1
kind: TrustedNetwork
metadata: {name: loopback, namespace: app}
spec: {cidrs: [127.0.0.0/8]}
`
)

func sdYAML(ns, name, domain string) string {
	return strings.NewReplacer("%NS%", ns, "%NAME%", name, "%DOMAIN%", domain).Replace(checkSD)
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestCheck(t *testing.T) {
	tests := []struct {
		desc       string
		files      map[string]string
		args       []string
		wantCode   int
		wantStdout []string
		wantStderr []string
	}{
		{
			desc:     "the samples pass, the generated key is pending",
			args:     []string{"--strict", filepath.Join("..", "..", "config", "samples")},
			wantCode: checkOK,
			wantStdout: []string{
				"postgate_v1alpha1_relayroute.yaml:5: RelayRoute default/billing-via-smarthost: Accepted Accepted",
				"SenderDomain default/example-com: Pending Pending: Waiting for the DKIM key to be generated",
				"5 objects: 4 accepted, 0 refused, 0 unresolved, 0 unknown, 1 pending",
			},
		},
		{
			desc: "file order decides a conflict; the message names the winner",
			files: map[string]string{
				"a.yaml": sdYAML("team-a", "first", "example.com"),
				"b.yaml": sdYAML("team-b", "second", "example.com") + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: team-b}\n",
			},
			wantCode: checkRefused,
			wantStdout: []string{
				"a.yaml:1: SenderDomain team-a/first: Accepted Accepted",
				"b.yaml:1: SenderDomain team-b/second: Refused Conflicted: Domain example.com is already claimed by SenderDomain team-a/first",
				"1 other documents skipped",
			},
		},
		{
			desc: "a value the schema refuses, with its line",
			files: map[string]string{"route.yaml": `apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: r, namespace: app}
spec:
  senderDomainRef: {name: sd}
  target:
    host: 192.0.2.25
`},
			wantCode:   checkRefused,
			wantStdout: []string{"route.yaml:1: RelayRoute app/r: Refused Invalid", "route.yaml:7: spec.target.host: Invalid value"},
		},
		{
			desc:       "unreadable YAML: exit 2 with file and line",
			files:      map[string]string{"bad.yaml": sdYAML("app", "ok", "example.com") + "---\nkind: [\n"},
			wantCode:   checkUnreadable,
			wantStderr: []string{"bad.yaml:6"},
		},
		{
			desc: "a Secret not in the files is Unknown, which fails only with --strict",
			files: map[string]string{"sd.yaml": `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: sd, namespace: app}
spec:
  domain: example.com
  signing: {selector: s1, keySecretRef: {name: from-vault}}
`},
			wantCode:   checkOK,
			wantStdout: []string{"SenderDomain app/sd: Unknown RefNotChecked: Secret \"from-vault\" (DKIM key) is not among the given manifests"},
		},
		{
			desc: "a route whose SenderDomain is unresolved would hold its mail",
			files: map[string]string{"sd.yaml": `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: sd, namespace: app}
spec:
  domain: example.com
  delivery: {webhook: {url: "https://hooks.example.com/", hmacSecretRef: {name: hook}}}
---
apiVersion: v1
kind: Secret
metadata: {name: hook, namespace: app}
stringData: {key: short}
---
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: r, namespace: app}
spec:
  senderDomainRef: {name: sd}
  target: {host: smarthost.example.net}
`},
			wantCode: checkRefused,
			wantStdout: []string{
				"RelayRoute app/r: Held DeliveryHeld: Mail from example.com is held",
				`its SenderDomain "sd" is not resolved`,
				"1 unresolved, 0 unknown, 1 pending",
			},
		},
		{
			desc: "the same with --strict",
			files: map[string]string{"sd.yaml": `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: sd, namespace: app}
spec:
  domain: example.com
  signing: {selector: s1, keySecretRef: {name: from-vault}}
`},
			args:     []string{"--strict"},
			wantCode: checkRefused,
		},
		{
			desc: "a broken key in the files is unresolved and fails",
			files: map[string]string{"sd.yaml": `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: sd, namespace: app}
spec:
  domain: example.com
  signing: {selector: s1, keySecretRef: {name: dkim}}
---
apiVersion: v1
kind: Secret
metadata: {name: dkim, namespace: app}
stringData: {private.key: "not a key"}
`},
			wantCode:   checkRefused,
			wantStdout: []string{"Unresolved InvalidSecret: Secret \"dkim\" key \"private.key\": unusable DKIM key: no PEM block found"},
		},
		{
			desc: "signing exclusivity",
			files: map[string]string{"all.yaml": `apiVersion: postgate.io/v1alpha1
kind: SenderDomain
metadata: {name: sd, namespace: app}
spec:
  domain: example.com
  signing: {selector: s1, algorithm: Ed25519, generate: {}}
---
apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: r, namespace: app}
spec:
  senderDomainRef: {name: sd}
  target: {host: smarthost.relay.test}
`},
			wantCode:   checkRefused,
			wantStdout: []string{"RelayRoute app/r: Refused SigningEnabled", "SigningEnabled: RelayRoute r refused"},
		},
		{
			desc: "a guardrail policy",
			files: map[string]string{
				"sd.yaml":     sdYAML("team-a", "sd", "b.example.com") + "---\n" + checkTN,
				"policy.conf": "domainClaims:\n- namespaces: [team-a]\n  suffixes: [a.example.com]\n",
			},
			args:       []string{"--policy", "%DIR%/policy.conf"},
			wantCode:   checkRefused,
			wantStdout: []string{"Refused DomainNotAllowed: The guardrail policy does not let namespace \"team-a\" claim domain b.example.com"},
		},
		{
			desc: "policy keys match exactly: a key in other case is an error, not ignored",
			files: map[string]string{
				"sd.yaml":     sdYAML("team-a", "sd", "b.example.com"),
				"policy.conf": "DOMAINCLAIMS:\n- namespaces: [team-a]\n  suffixes: [a.example.com]\n",
			},
			args:       []string{"--policy", "%DIR%/policy.conf"},
			wantCode:   checkUnreadable,
			wantStderr: []string{"policy.conf", `unknown field "DOMAINCLAIMS"`},
		},
		{
			desc: "the TrustedNetworks without AUTH of a namespace are bounded together",
			files: map[string]string{"tn.yaml": strings.ReplaceAll(checkTN, "{cidrs: [127.0.0.0/8]}", "{cidrs: [10.0.0.0/8, 11.0.0.0/8, 12.0.0.0/8]}") +
				"---\n" + strings.NewReplacer("name: loopback", "name: more", "{cidrs: [127.0.0.0/8]}", "{cidrs: [13.0.0.0/8, 14.0.0.0/8]}").Replace(checkTN)},
			wantCode:   checkRefused,
			wantStdout: []string{"TrustedNetwork app/loopback: Accepted", `TrustedNetwork app/more: Refused NetworkTooBroad: Together with the older TrustedNetworks without AUTH of namespace "app" (loopback)`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			args := []string{"check"}
			if len(tt.files) > 0 {
				dir := writeFiles(t, tt.files)
				for _, a := range tt.args {
					args = append(args, strings.ReplaceAll(a, "%DIR%", dir))
				}
				for name := range tt.files {
					if strings.HasSuffix(name, ".yaml") {
						args = append(args, filepath.Join(dir, name))
					}
				}
				// Map iteration is random; file order must not be.
				yamls := args[1+len(tt.args):]
				slices.Sort(yamls)
			} else {
				args = append(args, tt.args...)
			}
			var stdout, stderr bytes.Buffer
			code := run(args, &stdout, &stderr)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			for _, w := range tt.wantStdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			for _, w := range tt.wantStderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
		})
	}
}

// TestCheckJSON checks -o json: one verdict per object, with the fields a CI
// annotation needs, the field errors of a refused object at their lines,
// and the exit status of the text output.
func TestCheckJSON(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"a.yaml": sdYAML("app", "first", "example.com") + "---\n" + sdYAML("app", "second", "example.com"),
		"b.yaml": `apiVersion: postgate.io/v1alpha1
kind: RelayRoute
metadata: {name: r, namespace: app}
spec:
  senderDomainRef: {name: first}
  target:
    host: 192.0.2.25
---
apiVersion: v1
kind: Secret
metadata: {name: unused, namespace: app}
stringData: {key: value}
`,
	})
	for _, flag := range []string{"-o", "--output"} {
		var stdout, stderr bytes.Buffer
		code := run([]string{"check", flag, "json", filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")}, &stdout, &stderr)
		if code != checkRefused {
			t.Errorf("%s json: exit %d, want %d; stderr:\n%s", flag, code, checkRefused, stderr.String())
		}
		var got []struct {
			Kind, Namespace, Name, File string
			Line                        int
			Verdict, Condition, Status  string
			Reason, Message             string
			Errors                      []struct {
				Field, File, Message string
				Line                 int
			}
		}
		dec := json.NewDecoder(&stdout)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("%s json: stdout is not the JSON array of verdicts: %v", flag, err)
		}
		if dec.More() {
			t.Errorf("%s json: more than one JSON value on stdout", flag)
		}
		if len(got) != 3 {
			t.Fatalf("%s json: got %d verdicts, want 3 (the valid Secret is not judged): %+v", flag, len(got), got)
		}
		first, second, route := got[0], got[1], got[2]
		if first.Kind != "SenderDomain" || first.Namespace != "app" || first.Name != "first" || first.File != filepath.Join(dir, "a.yaml") || first.Line != 1 ||
			first.Verdict != "Accepted" || first.Condition != "Accepted" || first.Status != "True" || first.Reason != "Accepted" {
			t.Errorf("first: %+v", first)
		}
		if second.Line != 6 || second.Verdict != "Refused" || second.Condition != "Accepted" || second.Status != "False" ||
			second.Reason != "Conflicted" || !strings.Contains(second.Message, "already claimed by SenderDomain app/first") {
			t.Errorf("second: %+v", second)
		}
		if route.Kind != "RelayRoute" || route.Verdict != "Refused" || route.Reason != "Invalid" || len(route.Errors) != 1 {
			t.Fatalf("route: %+v", route)
		}
		if fe := route.Errors[0]; fe.Field != "spec.target.host" || fe.File != filepath.Join(dir, "b.yaml") || fe.Line != 7 || !strings.Contains(fe.Message, "no IP address") {
			t.Errorf("route field error: %+v", fe)
		}
	}

	var stdout, stderr bytes.Buffer
	if code := run([]string{"check", "-o", "yaml", filepath.Join(dir, "a.yaml")}, &stdout, &stderr); code != checkUnreadable || !strings.Contains(stderr.String(), "text or json") {
		t.Errorf("-o yaml: exit %d, stderr %q; want %d and the formats", code, stderr.String(), checkUnreadable)
	}
	stdout.Reset()
	if code := run([]string{"check", "-o", "json", filepath.Join(dir, "missing.yaml")}, &stdout, &stderr); code != checkUnreadable || stdout.Len() != 0 {
		t.Errorf("unreadable input: exit %d, stdout %q; want %d and nothing on stdout", code, stdout.String(), checkUnreadable)
	}
}
