package v1alpha1

// ConditionType is the type of a condition in status.conditions. The API's
// metav1.Condition holds it as a string: convert where a condition is built
// or read.
type ConditionType string

// Reason is the reason of a condition (and of the Event on its transition).
type Reason string

// Condition types. Summary conditions (Accepted, ResolvedRefs, Programmed,
// Ready) are positive and always present; the others appear only while true.
// Every condition carries the observedGeneration it was computed for.
const (
	// ConditionAccepted says whether the object's spec is taken into the
	// routing table.
	//
	// True: ReasonAccepted.
	// False: ReasonConflicted, ReasonSigningEnabled, ReasonSenderDomainNotFound,
	// ReasonSenderDomainNotAccepted, ReasonAddressOutsideDomain,
	// ReasonDomainNotAllowed, ReasonNetworkTooBroad, ReasonInvalid.
	// Unknown: ReasonPending (not compiled yet).
	ConditionAccepted ConditionType = "Accepted"

	// ConditionResolvedRefs says whether every Secret the object references
	// exists and holds a usable value. An object with unresolved references
	// takes no effect until they are fixed.
	//
	// True: ReasonResolvedRefs.
	// False: ReasonSecretNotFound, ReasonInvalidSecret.
	// Unknown: ReasonPending, ReasonRefNotChecked (postgate check: the
	// Secret is not among the given files).
	ConditionResolvedRefs ConditionType = "ResolvedRefs"

	// ConditionProgrammed says whether every live relay has loaded a routing
	// table that contains this generation of the object (docs/design.md contract 2).
	//
	// True: ReasonProgrammed.
	// False: ReasonPending (relays not there yet), ReasonNoRelays,
	// ReasonNotAccepted (the object takes no effect, so nothing to program),
	// ReasonDeliveryHeld (the relays hold the domain's mail: the route
	// cannot take effect, or the signing key is unavailable).
	// Unknown: ReasonPending.
	ConditionProgrammed ConditionType = "Programmed"

	// ConditionReady summarizes Accepted, ResolvedRefs and Programmed.
	//
	// True: ReasonReady.
	// False: the reason of the first summary condition that is not True.
	ConditionReady ConditionType = "Ready"

	// ConditionStalled is present, True, while the object cannot make
	// progress until a user changes the configuration (kstatus: Failed): it
	// is refused by a judgement that nothing arriving later changes. Its
	// reason is Accepted's: ReasonInvalid, ReasonConflicted,
	// ReasonSigningEnabled, ReasonSenderDomainNotAccepted,
	// ReasonAddressOutsideDomain, ReasonDomainNotAllowed,
	// ReasonNetworkTooBroad.
	ConditionStalled ConditionType = "Stalled"

	// ConditionReconciling is present, True, while the object waits for
	// something that may still come by itself, as a later object of the
	// same apply (kstatus: InProgress): its SenderDomain
	// (ReasonSenderDomainNotFound, with Accepted=False but no Warning
	// Event), a Secret (ReasonSecretNotFound, ReasonInvalidSecret), the
	// relays (ReasonPending, ReasonNoRelays). Its reason is Ready's.
	ConditionReconciling ConditionType = "Reconciling"

	// ConditionRouteRefused is present on a SenderDomain, True, while a
	// RelayRoute for it is refused because of the SenderDomain itself
	// (ReasonSigningEnabled): mail of the domain is signed and goes to MX.
	ConditionRouteRefused ConditionType = "RouteRefused"

	// ConditionDeliveryDegraded is present, True, while the relays report
	// failing delivery for this object's mail (derived by the operator from
	// status.delivery.replicas).
	//
	// True: ReasonTargetUnreachable, ReasonTemporaryFailures, ReasonBounces,
	// ReasonSourceIPUnavailable, ReasonTLSRequiredButUnavailable,
	// ReasonThrottled.
	ConditionDeliveryDegraded ConditionType = "DeliveryDegraded"
)

// Condition reasons.
const (
	// ReasonAccepted: the object is in the routing table.
	ReasonAccepted Reason = "Accepted"
	// ReasonConflicted: an older object claims the same domain (SenderDomain)
	// or the same sender domain (RelayRoute); the message names it.
	ReasonConflicted Reason = "Conflicted"
	// ReasonSigningEnabled: the RelayRoute's SenderDomain signs with DKIM, and
	// a domain is either signed or relayed, never both.
	ReasonSigningEnabled Reason = "SigningEnabled"
	// ReasonSenderDomainNotFound: the RelayRoute names a SenderDomain that
	// does not exist in its namespace (yet): the route waits for it
	// (Reconciling, not Stalled).
	ReasonSenderDomainNotFound Reason = "SenderDomainNotFound"
	// ReasonSenderDomainNotAccepted: the RelayRoute's SenderDomain exists but
	// is not accepted itself.
	ReasonSenderDomainNotAccepted Reason = "SenderDomainNotAccepted"
	// ReasonAddressOutsideDomain: a sender address of the RelayRoute is not
	// in its SenderDomain's domain.
	ReasonAddressOutsideDomain Reason = "AddressOutsideDomain"
	// ReasonDomainNotAllowed: the guardrail policy does not let this
	// namespace claim this domain (docs/design.md contract 7).
	ReasonDomainNotAllowed Reason = "DomainNotAllowed"
	// ReasonNetworkTooBroad: the guardrail policy does not allow a network
	// this broad without SMTP AUTH (docs/design.md contract 7).
	ReasonNetworkTooBroad Reason = "NetworkTooBroad"
	// ReasonInvalid: the spec is invalid in a way the schema cannot show.
	ReasonInvalid Reason = "Invalid"

	// ReasonResolvedRefs: every referenced Secret is there and usable.
	ReasonResolvedRefs Reason = "ResolvedRefs"
	// ReasonSecretNotFound: a referenced Secret does not exist (yet).
	ReasonSecretNotFound Reason = "SecretNotFound"
	// ReasonInvalidSecret: a referenced Secret lacks the key, or holds an
	// unusable value (bad PEM, wrong algorithm, key too short, wrong type).
	ReasonInvalidSecret Reason = "InvalidSecret"
	// ReasonRefNotChecked: the Secret was not available to check (offline
	// validation with postgate check).
	ReasonRefNotChecked Reason = "RefNotChecked"

	// ReasonProgrammed: every live relay has loaded this generation.
	ReasonProgrammed Reason = "Programmed"
	// ReasonPending: the work is not done yet.
	ReasonPending Reason = "Pending"
	// ReasonNoRelays: no relay replica is live.
	ReasonNoRelays Reason = "NoRelays"
	// ReasonNotAccepted: the object is not accepted, so there is nothing to
	// program.
	ReasonNotAccepted Reason = "NotAccepted"

	// ReasonDeliveryHeld: on a RelayRoute that is accepted but cannot take
	// effect (its credentials or CA bundle Secret, or its SenderDomain, is
	// not resolved) and on its SenderDomain, the relays hold the mail the
	// route would carry: deferred with 4.4.4 at each attempt, new and
	// queued alike, never sent by MX, until the route resolves or is
	// deleted; it still expires at the domain's queue lifetime. On a
	// signing SenderDomain whose key is unavailable, the relays refuse its
	// new mail with 451 4.3.0 at the end of DATA rather than send it
	// unsigned. The message names the reason.
	ReasonDeliveryHeld Reason = "DeliveryHeld"

	// ReasonReady: accepted, resolved and programmed.
	ReasonReady Reason = "Ready"

	// ReasonTargetUnreachable: the next hop could not be connected to or
	// looked up, for now (a temporary failure without a reply).
	ReasonTargetUnreachable Reason = "TargetUnreachable"
	// ReasonTemporaryFailures: the next hop answers with 4xx replies.
	ReasonTemporaryFailures Reason = "TemporaryFailures"
	// ReasonBounces: delivery fails permanently: the next hop rejects mail
	// with 5xx, or, without a reply, the relay's own code is 5.x.x (the
	// recipient domain does not exist, 5.1.2, or accepts no mail, 5.1.10).
	ReasonBounces Reason = "Bounces"
	// ReasonSourceIPUnavailable: the dedicated source address cannot be
	// bound on the relay's host.
	ReasonSourceIPUnavailable Reason = "SourceIPUnavailable"
	// ReasonTLSRequiredButUnavailable: the TLS policy (the domain's own, or
	// the recipient domain's DANE or enforced MTA-STS policy) requires TLS
	// and the next hop does not offer it, or its certificate does not
	// verify.
	ReasonTLSRequiredButUnavailable Reason = "TLSRequiredButUnavailable"
	// ReasonThrottled: the mail waits on its recipients' traffic shaping
	// site (the relay's own limits toward a receiving operator): the site
	// is suspended after a throttle reply, or one of its limits
	// (connections, rates) is reached. The relays defer the mail without
	// counting an attempt; the message names the site and until when.
	ReasonThrottled Reason = "Throttled"
)

// Event reasons that are not condition reasons. Events (events.k8s.io) are
// aggregated: the operator emits one on each transition of a condition, a
// relay at most one per object per status write (10 s).
const (
	// EventReasonDeliveryRecovered (Normal, from the operator): the
	// DeliveryDegraded condition cleared, a failing period ended. Its
	// start is the Warning Event with the condition's reason.
	EventReasonDeliveryRecovered = "DeliveryRecovered"
	// EventReasonBounced (Warning, from a relay): recipients bounced or
	// expired since the relay's last Event for the object; the note
	// gives the count and the last reply.
	EventReasonBounced = "Bounced"
)
