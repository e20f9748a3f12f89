package routing

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// Kinds of the objects the compiler judges.
const (
	KindSenderDomain   = "SenderDomain"
	KindRelayRoute     = "RelayRoute"
	KindTrustedNetwork = "TrustedNetwork"
)

// ObjectRef identifies one generation of one object. The table records the
// ObjectRef of every object it contains (docs/design.md contract 1), which is how
// the operator knows which generation a relay has programmed.
type ObjectRef struct {
	Kind       string    `json:"kind"`
	Namespace  string    `json:"namespace"`
	Name       string    `json:"name"`
	UID        types.UID `json:"uid,omitempty"`
	Generation int64     `json:"generation,omitempty"`
}

// Key returns kind/namespace/name.
func (r ObjectRef) Key() ObjectKey {
	return ObjectKey{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
}

// ObjectKey identifies an object regardless of its generation.
type ObjectKey struct {
	Kind, Namespace, Name string
}

func (k ObjectKey) String() string { return k.Kind + " " + k.Namespace + "/" + k.Name }

// Status is the status, reason and message of one condition.
type Status struct {
	Status  metav1.ConditionStatus
	Reason  v1alpha1.Reason
	Message string
}

func statusTrue(reason v1alpha1.Reason, msg string) Status {
	return Status{metav1.ConditionTrue, reason, msg}
}

func statusFalse(reason v1alpha1.Reason, msg string) Status {
	return Status{metav1.ConditionFalse, reason, msg}
}

// Verdict is the compiler's judgement of one object: the conditions that
// depend on the resources alone. Programmed depends on the relays and is
// added by Conditions.
type Verdict struct {
	Object ObjectRef
	// Accepted says whether the spec is taken (conflicts, exclusivity,
	// guardrails, validity).
	Accepted Status
	// ResolvedRefs says whether every referenced Secret is usable.
	ResolvedRefs Status
	// RouteRefused is set on a SenderDomain while a RelayRoute for it is
	// refused because the domain signs.
	RouteRefused *Status
	// InTable is true when the object is in the compiled table: accepted,
	// resolved, and (for a route) its SenderDomain in the table too; or
	// accepted and in the table as a held entry (Held).
	InTable bool
	// Pending explains why an accepted, resolved object is not in the
	// table (a DKIM key still to be generated).
	Pending string
	// Held is set when the object is in the table as a held entry: it
	// says what the relays do with the domain's mail meanwhile (defer it,
	// or refuse it at DATA), and why.
	Held string
	// DKIM is the DNS record to publish, for a SenderDomain whose key
	// resolved.
	DKIM *v1alpha1.DKIMRecord
	// SecretRefs are the names of the Secrets, in the object's namespace,
	// that the compile looked up for it, found or not, sorted: a change to
	// any of them may change the verdict or the table, and to no other.
	SecretRefs []string
}

// Refused reports whether the spec is not taken (Accepted=False).
func (v *Verdict) Refused() bool { return v.Accepted.Status == metav1.ConditionFalse }

// Stalled reports whether the object cannot make progress until a user
// changes something (kstatus: Failed): it is refused for a reason other
// than a wait. See Waits.
func (v *Verdict) Stalled() bool { return v.Refused() && !Waits(v.Accepted.Reason) }

// Waits reports whether a refusal with this reason waits for something that
// may still come by itself, as an object later in the same apply: the
// object is then Reconciling (kstatus: InProgress), not Stalled, and no
// Warning Event is recorded for the wait. A refusal that only a user's
// change can lift (of the object, of the older object it conflicts with,
// of its SenderDomain's spec, or of the guardrail policy) stalls.
func Waits(reason v1alpha1.Reason) bool { return reason == v1alpha1.ReasonSenderDomainNotFound }

// Conditions returns every condition of the object for the given Programmed
// state, as the operator writes them and `postgate check` prints them:
// Accepted, ResolvedRefs, Programmed and Ready always; RouteRefused while
// true; Stalled when only a user's change can make the object progress
// (kstatus: Failed); otherwise Reconciling while something may still come,
// such as a missing SenderDomain or Secret, or the relays (kstatus:
// InProgress). Stalled and Reconciling are never both present.
func (v *Verdict) Conditions(programmed Status) []metav1.Condition {
	gen := v.Object.Generation
	cond := func(t v1alpha1.ConditionType, s Status) metav1.Condition {
		return metav1.Condition{Type: string(t), Status: s.Status, Reason: string(s.Reason), Message: s.Message, ObservedGeneration: gen}
	}
	if !v.InTable {
		// Nothing of this object is in any table: it cannot be programmed,
		// whatever the relays loaded.
		programmed = v.notProgrammable()
	} else if v.Held != "" {
		programmed = held(v.Held, programmed)
	}
	conds := []metav1.Condition{
		cond(v1alpha1.ConditionAccepted, v.Accepted),
		cond(v1alpha1.ConditionResolvedRefs, v.ResolvedRefs),
		cond(v1alpha1.ConditionProgrammed, programmed),
	}
	ready := statusTrue(v1alpha1.ReasonReady, "Accepted, references resolved, and programmed on every live relay")
	for _, c := range conds {
		if c.Status != metav1.ConditionTrue {
			ready = Status{metav1.ConditionFalse, v1alpha1.Reason(c.Reason), c.Message}
			if c.Status == metav1.ConditionUnknown {
				ready.Status = metav1.ConditionUnknown
			}
			break
		}
	}
	conds = append(conds, cond(v1alpha1.ConditionReady, ready))
	if v.RouteRefused != nil {
		conds = append(conds, cond(v1alpha1.ConditionRouteRefused, *v.RouteRefused))
	}
	switch {
	case v.Stalled():
		conds = append(conds, cond(v1alpha1.ConditionStalled, statusTrue(v.Accepted.Reason, v.Accepted.Message)))
	case ready.Status != metav1.ConditionTrue:
		conds = append(conds, cond(v1alpha1.ConditionReconciling, statusTrue(ready.Reason, ready.Message)))
	}
	return conds
}

// notProgrammable is the Programmed state of an object that is not in the
// table.
func (v *Verdict) notProgrammable() Status {
	switch {
	case v.Refused():
		return statusFalse(v1alpha1.ReasonNotAccepted, "Not accepted, so not in the routing table")
	case v.ResolvedRefs.Status != metav1.ConditionTrue:
		return Status{v.ResolvedRefs.Status, v1alpha1.ReasonPending, "Takes effect once its Secret references resolve"}
	default:
		return statusFalse(v1alpha1.ReasonPending, v.Pending)
	}
}

// held is the Programmed state of a held entry: never Programmed, and not
// Pending either, since a relay that loaded the table already holds the
// mail; the message says how far the relays are.
func held(why string, programmed Status) Status {
	msg := why
	switch {
	case programmed.Status == metav1.ConditionTrue:
		msg += " (every live relay holds it)"
	case programmed.Message != "":
		msg += " (" + programmed.Message + ")"
	}
	return statusFalse(v1alpha1.ReasonDeliveryHeld, msg)
}

// ProgrammedUnknown is the Programmed state when no relay has been asked,
// as in `postgate check`.
func ProgrammedUnknown() Status {
	return Status{metav1.ConditionUnknown, v1alpha1.ReasonPending, "Not programmed yet: no relay has loaded a table with this generation"}
}
