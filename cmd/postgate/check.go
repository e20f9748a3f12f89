package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/manifest"
	"github.com/postgate/postgate/internal/routing"
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

With -o json, stdout is one JSON array with one verdict per object (kind,
namespace, name, file, line, verdict, condition, status, reason, message,
and the field errors of an object the API server would refuse), for CI
annotations; the exit status is the same.

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
	output := "text"
	fs.StringVar(&output, "o", output, "output format: text or json")
	fs.StringVar(&output, "output", output, "output format: text or json (same as -o)")
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage); fs.PrintDefaults() }
	if err := fs.Parse(args); err != nil {
		return checkUnreadable
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return checkUnreadable
	}
	if output != "text" && output != "json" {
		fmt.Fprintf(stderr, "postgate check: -o %q: the output format is text or json\n", output)
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
	var verdicts []checkVerdict
	for _, o := range set.Objects {
		if v, ok := judge(o, result); ok {
			r.count(v)
			verdicts = append(verdicts, v)
		}
	}
	if output == "json" {
		if verdicts == nil {
			verdicts = []checkVerdict{} // [] rather than null
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(verdicts); err != nil {
			fmt.Fprintf(stderr, "postgate check: %v\n", err)
			return checkUnreadable
		}
		return r.exitCode()
	}
	for _, v := range verdicts {
		v.writeText(stdout)
	}
	r.summary(stdout, len(set.Skipped))
	return r.exitCode()
}

// checkVerdict is what postgate check says about one object, in the text
// output as a line and in the JSON output as an element of the array.
type checkVerdict struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	File      string `json:"file"`
	Line      int    `json:"line"`
	// Verdict is Accepted, Refused, Unresolved, Unknown, Pending or Held
	// (the route's mail would be held: its SenderDomain is unresolved).
	Verdict string `json:"verdict"`
	// Condition is the condition the verdict comes from (Accepted,
	// ResolvedRefs or Programmed), with its status, reason and message as
	// the operator would set them.
	Condition string `json:"condition"`
	Status    string `json:"status"`
	Reason    string `json:"reason"`
	Message   string `json:"message"`
	// Errors are the field errors of an object the API server would refuse.
	Errors []checkFieldError `json:"errors,omitempty"`
	// RouteRefused says why a RelayRoute of this SenderDomain is refused.
	RouteRefused *checkNote `json:"routeRefused,omitempty"`
	// DKIM is the TXT record to publish for the domain's signing key.
	DKIM *checkDNSRecord `json:"dkim,omitempty"`
}

type checkFieldError struct {
	Field   string `json:"field"`
	File    string `json:"file"`
	Line    int    `json:"line"`
	Message string `json:"message"`
}

type checkNote struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type checkDNSRecord struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// judge returns the verdict on o, or false for an object that is not judged
// itself (a valid Secret, an input of the others).
func judge(o *manifest.Object, result *routing.Result) (checkVerdict, bool) {
	v := checkVerdict{Kind: o.Kind, Namespace: o.Resource.GetNamespace(), Name: o.Resource.GetName(), File: o.Pos.File, Line: o.Pos.Line}
	set := func(verdict string, condition v1alpha1.ConditionType, status metav1.ConditionStatus, reason v1alpha1.Reason, msg string) {
		v.Verdict, v.Condition, v.Status, v.Reason, v.Message = verdict, string(condition), string(status), string(reason), msg
	}
	if !o.Valid() {
		set("Refused", v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonInvalid,
			fmt.Sprintf("the API server would refuse it (%d field errors)", len(o.Errors)))
		for _, fe := range o.Errors {
			pos := o.FieldPos(fe.Field)
			v.Errors = append(v.Errors, checkFieldError{Field: fe.Field, File: pos.File, Line: pos.Line, Message: fe.Error()})
		}
		return v, true
	}
	if o.Kind == "Secret" {
		return v, false
	}
	rv := result.Verdict(routing.ObjectKey{Kind: o.Kind, Namespace: v.Namespace, Name: v.Name})
	if rv == nil {
		return v, false
	}
	switch {
	case rv.Refused():
		set("Refused", v1alpha1.ConditionAccepted, rv.Accepted.Status, rv.Accepted.Reason, rv.Accepted.Message)
	case rv.ResolvedRefs.Status == metav1.ConditionFalse:
		set("Unresolved", v1alpha1.ConditionResolvedRefs, rv.ResolvedRefs.Status, rv.ResolvedRefs.Reason, rv.ResolvedRefs.Message)
	case rv.ResolvedRefs.Status == metav1.ConditionUnknown:
		set("Unknown", v1alpha1.ConditionResolvedRefs, rv.ResolvedRefs.Status, rv.ResolvedRefs.Reason, rv.ResolvedRefs.Message)
	case !rv.InTable:
		set("Pending", v1alpha1.ConditionProgrammed, metav1.ConditionFalse, v1alpha1.ReasonPending, rv.Pending)
	case rv.Held != "":
		set("Held", v1alpha1.ConditionProgrammed, metav1.ConditionFalse, v1alpha1.ReasonDeliveryHeld, rv.Held)
	default:
		set("Accepted", v1alpha1.ConditionAccepted, rv.Accepted.Status, rv.Accepted.Reason, rv.Accepted.Message)
	}
	if rv.RouteRefused != nil {
		v.RouteRefused = &checkNote{Reason: string(rv.RouteRefused.Reason), Message: rv.RouteRefused.Message}
	}
	if rv.DKIM != nil {
		v.DKIM = &checkDNSRecord{Name: rv.DKIM.Name, Value: rv.DKIM.Value}
	}
	return v, true
}

// writeText writes the verdict as a line, position first, the way editors
// and CI logs link it, with its details indented below.
func (v *checkVerdict) writeText(w io.Writer) {
	pos := manifest.Position{File: v.File, Line: v.Line}
	fmt.Fprintf(w, "%s: %s %s/%s: %s %s: %s\n", pos, v.Kind, v.Namespace, v.Name, v.Verdict, v.Reason, v.Message)
	for _, fe := range v.Errors {
		fmt.Fprintf(w, "  %s: %s\n", manifest.Position{File: fe.File, Line: fe.Line}, fe.Message)
	}
	if v.RouteRefused != nil {
		fmt.Fprintf(w, "  %s: %s\n", v.RouteRefused.Reason, v.RouteRefused.Message)
	}
	if v.DKIM != nil {
		fmt.Fprintf(w, "  publish DNS TXT %s %q\n", v.DKIM.Name, v.DKIM.Value)
	}
}

// checkReport counts verdicts.
type checkReport struct {
	strict                                       bool
	accepted, refused, unresolved, unknown, pend int
}

func (r *checkReport) count(v checkVerdict) {
	switch v.Verdict {
	case "Refused":
		r.refused++
	case "Unresolved":
		r.unresolved++
	case "Unknown":
		r.unknown++
	case "Pending", "Held":
		r.pend++
	default:
		r.accepted++
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
