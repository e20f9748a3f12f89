package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/relay/manifest"
	"github.com/postgate/postgate/relay/routing"
)

const checkUsage = `Usage: postgate check [flags] PATH...

Validates manifests offline, as the operator would judge them: reads the
files and directories given (multi-document YAML; file order stands in for
creation time), admits each object with the CRD schemas, compiles, and prints
one line per object: position, kind, namespace/name, verdict, reason, message.

Exit status: 0 when everything is accepted; 1 when an object is refused or a
Secret it references is unusable; 2 when input cannot be read. A Secret that
is not among the given files is reported Unknown (it may come from a secret
manager) and fails only with --strict. A DKIM key to generate is Pending: it
is made on first use.

Flags:
`

// checkExit are the exit codes of postgate check.
const (
	checkOK         = 0
	checkRefused    = 1
	checkUnreadable = 2
)

func runCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	strict := fs.Bool("strict", false, "fail also when a referenced Secret is not among the given files")
	namespace := fs.String("namespace", metav1.NamespaceDefault, "namespace of objects whose manifest sets none")
	recursive := fs.Bool("recursive", false, "read the subdirectories of directories too")
	policyFile := fs.String("policy", "", "guardrail policy file (the policy.yaml of the operator's policy ConfigMap)")
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return checkUnreadable
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return checkUnreadable
	}

	var policy routing.Policy
	if *policyFile != "" {
		data, err := os.ReadFile(*policyFile)
		if err == nil {
			policy, err = routing.ParsePolicy(data)
		}
		if err != nil {
			fmt.Fprintf(stderr, "postgate check: %s: %v\n", *policyFile, err)
			return checkUnreadable
		}
	}
	opts := []manifest.Option{manifest.WithNamespace(*namespace)}
	if *recursive {
		opts = append(opts, manifest.WithRecursive())
	}
	loader, err := manifest.NewLoader(opts...)
	if err != nil {
		fmt.Fprintf(stderr, "postgate check: %v\n", err)
		return checkUnreadable
	}
	set, err := loader.Load(fs.Args()...)
	if err != nil {
		for _, e := range flattenErrors(err) {
			fmt.Fprintf(stderr, "%v\n", e)
		}
		return checkUnreadable
	}

	in := manifest.Input(set, policy)
	in.SecretsIncomplete = true
	result := routing.Compile(in, nil)
	r := checkReport{strict: *strict}
	for _, o := range set.Objects {
		r.object(stdout, o, result)
	}
	r.summary(stdout, len(set.Skipped))
	return r.exitCode()
}

// checkReport counts verdicts while printing them.
type checkReport struct {
	strict                                       bool
	accepted, refused, unresolved, unknown, pend int
}

func (r *checkReport) object(w io.Writer, o *manifest.Object, result *routing.Result) {
	line := func(verdict, reason, msg string) {
		fmt.Fprintf(w, "%s: %s: %s %s: %s\n", o.Pos, o, verdict, reason, msg)
	}
	if !o.Valid() {
		r.refused++
		line("Refused", v1alpha1.ReasonInvalid, fmt.Sprintf("the API server would refuse it (%d field errors)", len(o.Errors)))
		for _, fe := range o.Errors {
			fmt.Fprintf(w, "  %s: %s\n", o.FieldPos(fe.Field), fe.Error())
		}
		return
	}
	if o.Kind == "Secret" {
		return // an input of the others, not judged itself
	}
	v := result.Verdict(routing.ObjectKey{Kind: o.Kind, Namespace: o.Resource.GetNamespace(), Name: o.Resource.GetName()})
	if v == nil {
		return
	}
	switch {
	case v.Refused():
		r.refused++
		line("Refused", v.Accepted.Reason, v.Accepted.Message)
	case v.ResolvedRefs.Status == metav1.ConditionFalse:
		r.unresolved++
		line("Unresolved", v.ResolvedRefs.Reason, v.ResolvedRefs.Message)
	case v.ResolvedRefs.Status == metav1.ConditionUnknown:
		r.unknown++
		line("Unknown", v.ResolvedRefs.Reason, v.ResolvedRefs.Message)
	case !v.InTable:
		r.pend++
		line("Pending", v1alpha1.ReasonPending, v.Pending)
	default:
		r.accepted++
		line("Accepted", v.Accepted.Reason, v.Accepted.Message)
	}
	if v.RouteRefused != nil {
		fmt.Fprintf(w, "  %s: %s\n", v.RouteRefused.Reason, v.RouteRefused.Message)
	}
	if v.DKIM != nil {
		fmt.Fprintf(w, "  publish DNS TXT %s %q\n", v.DKIM.Name, v.DKIM.Value)
	}
}

func (r *checkReport) summary(w io.Writer, skipped int) {
	total := r.accepted + r.refused + r.unresolved + r.unknown + r.pend
	fmt.Fprintf(w, "\n%d objects: %d accepted, %d refused, %d unresolved, %d unknown, %d pending; %d other documents skipped\n",
		total, r.accepted, r.refused, r.unresolved, r.unknown, r.pend, skipped)
}

func (r *checkReport) exitCode() int {
	if r.refused+r.unresolved > 0 || (r.strict && r.unknown > 0) {
		return checkRefused
	}
	return checkOK
}

// flattenErrors undoes errors.Join, so each error prints on its own line.
func flattenErrors(err error) []error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		return joined.Unwrap()
	}
	return []error{err}
}
