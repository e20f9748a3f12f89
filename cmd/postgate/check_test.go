package main

import (
	"bytes"
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
