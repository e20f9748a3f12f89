// Package check judges a set of manifests offline the way the operator
// would, and renders the verdicts as `postgate check` prints them: one line
// per object in text, or one JSON array for CI annotations.
package check

import (
	"encoding/json"
	"fmt"
	"io"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/manifest"
	"github.com/postgate/postgate/internal/routing"
)

// Verdict is what postgate check says about one object, in the text
// output as a line and in the JSON output as an element of the array.
type Verdict struct {
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
	Errors []FieldError `json:"errors,omitempty"`
	// RouteRefused says why a RelayRoute of this SenderDomain is refused.
	RouteRefused *Note `json:"routeRefused,omitempty"`
	// DKIM is the TXT record to publish for the domain's signing key.
	DKIM *DNSRecord `json:"dkim,omitempty"`
}

// FieldError is one field error of an object the API server would refuse,
// at the position of the field in its file.
type FieldError struct {
	Field   string `json:"field"`
	File    string `json:"file"`
	Line    int    `json:"line"`
	Message string `json:"message"`
}

// Note is a reason and message beside the verdict.
type Note struct {
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// DNSRecord is a record to publish.
type DNSRecord struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Report is the verdicts on a set of manifests, in file order, with their
// counts.
type Report struct {
	Verdicts []Verdict
	// Skipped is the number of documents that are none of the judged kinds.
	Skipped int

	accepted, refused, unresolved, unknown, pend int
}

// Judge compiles set with policy as the operator would, except that a
// Secret missing from set is Unknown rather than missing (it may come from
// a secret manager), and returns the verdict on each judged object.
func Judge(set *manifest.Set, policy routing.Policy) *Report {
	in := manifest.Input(set, policy)
	in.SecretsIncomplete = true
	result := routing.Compile(in, nil)
	r := &Report{Verdicts: []Verdict{}, Skipped: len(set.Skipped)}
	for _, o := range set.Objects {
		if v, ok := judge(o, result); ok {
			r.count(v)
			r.Verdicts = append(r.Verdicts, v)
		}
	}
	return r
}

// judge returns the verdict on o, or false for an object that is not judged
// itself (a valid Secret, an input of the others).
func judge(o *manifest.Object, result *routing.Result) (Verdict, bool) {
	v := Verdict{Kind: o.Kind, Namespace: o.Resource.GetNamespace(), Name: o.Resource.GetName(), File: o.Pos.File, Line: o.Pos.Line}
	set := func(verdict string, condition v1alpha1.ConditionType, status metav1.ConditionStatus, reason v1alpha1.Reason, msg string) {
		v.Verdict, v.Condition, v.Status, v.Reason, v.Message = verdict, string(condition), string(status), string(reason), msg
	}
	if !o.Valid() {
		set("Refused", v1alpha1.ConditionAccepted, metav1.ConditionFalse, v1alpha1.ReasonInvalid,
			fmt.Sprintf("the API server would refuse it (%d field errors)", len(o.Errors)))
		for _, fe := range o.Errors {
			pos := o.FieldPos(fe.Field)
			v.Errors = append(v.Errors, FieldError{Field: fe.Field, File: pos.File, Line: pos.Line, Message: fe.Error()})
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
		v.RouteRefused = &Note{Reason: string(rv.RouteRefused.Reason), Message: rv.RouteRefused.Message}
	}
	if rv.DKIM != nil {
		v.DKIM = &DNSRecord{Name: rv.DKIM.Name, Value: rv.DKIM.Value}
	}
	return v, true
}

func (r *Report) count(v Verdict) {
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

// Failed reports whether an object is refused or a Secret it references is
// unusable; with strict, also whether a referenced Secret is unknown.
func (r *Report) Failed(strict bool) bool {
	return r.refused+r.unresolved > 0 || (strict && r.unknown > 0)
}

// WriteText writes one line per verdict and a summary of the counts.
func (r *Report) WriteText(w io.Writer) {
	for i := range r.Verdicts {
		r.Verdicts[i].writeText(w)
	}
	total := r.accepted + r.refused + r.unresolved + r.unknown + r.pend
	fmt.Fprintf(w, "\n%d objects: %d accepted, %d refused, %d unresolved, %d unknown, %d pending; %d other documents skipped\n",
		total, r.accepted, r.refused, r.unresolved, r.unknown, r.pend, r.Skipped)
}

// WriteJSON writes the verdicts as one indented JSON array ([] when there
// are none, never null).
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r.Verdicts)
}

// writeText writes the verdict as a line, position first, the way editors
// and CI logs link it, with its details indented below.
func (v *Verdict) writeText(w io.Writer) {
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
