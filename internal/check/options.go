package check

import (
	"flag"
	"fmt"
	"io"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/postgate/postgate/internal/manifest"
	"github.com/postgate/postgate/internal/routing"
)

// Options are the flags of `postgate check`: how manifests are read, the
// policy they are judged by, and how the report is written.
type Options struct {
	Strict     bool   // --strict: an unknown Secret fails too
	Namespace  string // --namespace: of objects whose manifest sets none
	Recursive  bool   // --recursive: read subdirectories
	PolicyFile string // --policy: a guardrail policy file; empty: the default policy
	// ShapingPolicyFile (--shaping-policy) is a traffic shaping policy to
	// validate (JudgeShaping); empty: none.
	ShapingPolicyFile string
	Output            string // -o, --output: text or json
}

// BindFlags binds o to fs under the flags of `postgate check`, with their
// defaults.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.BoolVar(&o.Strict, "strict", false, "fail also when a referenced Secret is not among the given files")
	fs.StringVar(&o.Namespace, "namespace", metav1.NamespaceDefault, "namespace of objects whose manifest sets none")
	fs.BoolVar(&o.Recursive, "recursive", false, "read the subdirectories of directories too")
	fs.StringVar(&o.PolicyFile, "policy", "", "guardrail policy file (the policy.yaml of the operator's policy ConfigMap)")
	fs.StringVar(&o.ShapingPolicyFile, "shaping-policy", "", "traffic shaping policy file to validate (the shaping.yaml of the operator's policy ConfigMap, or a standalone relay's --shaping-policy); manifests are then optional")
	o.Output = "text"
	fs.StringVar(&o.Output, "o", o.Output, "output format: text or json")
	fs.StringVar(&o.Output, "output", o.Output, "output format: text or json (same as -o)")
}

// Check reports a flag value that is none of its choices.
func (o *Options) Check() error {
	if o.Output != "text" && o.Output != "json" {
		return fmt.Errorf("-o %q: the output format is text or json", o.Output)
	}
	return nil
}

// Policy reads the policy file; without one it is the default policy.
func (o *Options) Policy() (routing.Policy, error) {
	var policy routing.Policy
	if o.PolicyFile == "" {
		return policy, nil
	}
	data, err := os.ReadFile(o.PolicyFile)
	if err == nil {
		policy, err = routing.ParsePolicy(data)
	}
	if err != nil {
		return policy, fmt.Errorf("%s: %w", o.PolicyFile, err)
	}
	return policy, nil
}

// Loader reads manifests as the options say.
func (o *Options) Loader() (*manifest.Loader, error) {
	opts := []manifest.Option{manifest.WithNamespace(o.Namespace)}
	if o.Recursive {
		opts = append(opts, manifest.WithRecursive())
	}
	return manifest.NewLoader(opts...)
}

// Write writes r in the output format.
func (o *Options) Write(w io.Writer, r *Report) error {
	if o.Output == "json" {
		return r.WriteJSON(w)
	}
	r.WriteText(w)
	return nil
}
