package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckShapingPolicy: postgate check --shaping-policy validates a
// shaping policy offline, alone or with manifests: exit 0 when valid, 1
// with the parser's errors when not, 2 when the file cannot be read.
func TestCheckShapingPolicy(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"good.conf": "default: {maxConnections: 4, suspension: {initial: 5m, max: 2h, resetAfter: 1h}}\n" +
			"sites:\n  - {name: google, match: {sites: [google.com]}, maxConnections: 2}\n",
		"bad.conf": "default: {maxConnections: 4, suspension: {initial: 5m, max: 2h, resetAfter: 1h}}\n" +
			"sites:\n  - {name: google, match: {sites: [google.com]}, maxConnections: 2, suspension: {initial: 3h}}\n",
		"sd.yaml": sdYAML("app", "sd", "example.com"),
	})
	for _, tc := range []struct {
		desc               string
		args               []string
		wantCode           int
		wantStdout, stderr string
	}{
		{"valid alone", []string{"--shaping-policy", "good.conf"}, checkOK, "good.conf: valid shaping policy: the default rule and 1 site rules (google)", ""},
		{"valid with manifests", []string{"--shaping-policy", "good.conf", "sd.yaml"}, checkOK, "SenderDomain app/sd: Accepted", ""},
		{"invalid", []string{"--shaping-policy", "bad.conf"}, checkRefused, `bad.conf: shaping policy: sites[0] ("google").suspension: initial 3h0m0s is longer than max 2h0m0s`, ""},
		{"invalid with good manifests", []string{"--shaping-policy", "bad.conf", "sd.yaml"}, checkRefused, "SenderDomain app/sd: Accepted", ""},
		{"invalid, -o json: stdout stays the array", []string{"-o", "json", "--shaping-policy", "bad.conf", "sd.yaml"}, checkRefused, `"verdict": "Accepted"`, "is longer than max"},
		{"missing", []string{"--shaping-policy", "missing.conf"}, checkUnreadable, "", "missing.conf: no such file"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			args := []string{"check"}
			for _, a := range tc.args {
				if strings.Contains(a, ".") {
					a = filepath.Join(dir, a)
				}
				args = append(args, a)
			}
			var stdout, stderr bytes.Buffer
			if code := run(args, &stdout, &stderr); code != tc.wantCode {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.wantCode, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tc.wantStdout) {
				t.Errorf("stdout lacks %q:\n%s", tc.wantStdout, stdout.String())
			}
			if !strings.Contains(stderr.String(), tc.stderr) {
				t.Errorf("stderr lacks %q:\n%s", tc.stderr, stderr.String())
			}
		})
	}
}
