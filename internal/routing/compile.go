package routing

import (
	"cmp"
	"crypto"
	"crypto/x509"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// Secret data keys used when a reference names none.
const (
	// DKIMKeySecretKey holds a DKIM private key as PEM.
	DKIMKeySecretKey = "private.key"
	// WebhookKeySecretKey holds a webhook's HMAC key.
	WebhookKeySecretKey = "key"
	// CABundleSecretKey holds PEM CA certificates.
	CABundleSecretKey = "ca.crt"
	// minHMACKeyBytes is the shortest webhook HMAC key accepted (RFC 2104
	// section 3: keys shorter than the hash output weaken the MAC).
	minHMACKeyBytes = 16
)

// Input is everything the compiler reads.
type Input struct {
	SenderDomains   []v1alpha1.SenderDomain
	RelayRoutes     []v1alpha1.RelayRoute
	TrustedNetworks []v1alpha1.TrustedNetwork
	// Secrets are the Secrets the objects may reference (others are
	// ignored).
	Secrets []corev1.Secret
	// SecretsIncomplete says that Secrets may lack Secrets that exist, as in
	// `postgate check`, where they may come from a secret manager: a missing
	// Secret makes ResolvedRefs Unknown instead of False.
	SecretsIncomplete bool
	// KeysGeneratedLater says that the caller creates the missing generated
	// DKIM keys after the compile, as the operator does: an accepted
	// SenderDomain whose generated key Secret is not there yet waits for it
	// (Pending, references resolved) instead of missing its Secret.
	KeysGeneratedLater bool
	// Policy is the guardrail policy.
	Policy Policy
}

// Result is the compiled table and the verdict on every object.
type Result struct {
	Table *Table
	// Verdicts holds one verdict per input object, sorted by kind,
	// namespace and name.
	Verdicts []Verdict
}

// Verdict returns the verdict on an object, or nil.
func (r *Result) Verdict(key ObjectKey) *Verdict {
	i, ok := slices.BinarySearchFunc(r.Verdicts, key, func(v Verdict, k ObjectKey) int {
		return compareKeys(v.Object.Key(), k)
	})
	if !ok {
		return nil
	}
	return &r.Verdicts[i]
}

func compareKeys(a, b ObjectKey) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Compile turns resources into a routing table and a verdict per object. It
// is a pure function of its input: the same input gives the same table, byte
// for byte once encoded, and the same verdicts. cache may be nil; with a
// cache, keys and password hashes parsed by an earlier compile are reused.
// Compiles sharing a cache must not run concurrently.
func Compile(in Input, cache *Cache) *Result {
	cache.begin()
	defer cache.sweep()
	c := &compiler{in: in, cache: cache, secrets: map[string]*corev1.Secret{}, signers: map[string]crypto.Signer{}, pools: map[string]*x509.CertPool{}}
	for i := range in.Secrets {
		s := &in.Secrets[i]
		c.secrets[s.Namespace+"/"+s.Name] = s
	}
	domains, domainVerdicts := c.senderDomains()
	c.relayRoutes(domains)
	c.verdicts = append(c.verdicts, domainVerdicts...)
	c.trustedNetworks()

	// The table is built from the same units Encode writes and Decode
	// reads, so a decoded table is the compiled one.
	t, err := build(c.units, compiledKeys{c})
	if err != nil {
		// Compile validated every unit; failing here is a bug.
		panic(fmt.Sprintf("routing: building a compiled table: %v", err))
	}
	slices.SortFunc(c.verdicts, func(a, b Verdict) int { return compareKeys(a.Object.Key(), b.Object.Key()) })
	return &Result{Table: t, Verdicts: c.verdicts}
}

type compiler struct {
	in       Input
	cache    *Cache
	secrets  map[string]*corev1.Secret
	units    []unit
	verdicts []Verdict
	// signers and pools hold what this compile parsed, keyed by PEM, so
	// that building the table does not parse again.
	signers map[string]crypto.Signer
	pools   map[string]*x509.CertPool
}

func objectRef(kind string, m *metav1.ObjectMeta) ObjectRef {
	return ObjectRef{Kind: kind, Namespace: m.Namespace, Name: m.Name, UID: m.UID, Generation: m.Generation}
}

// byAge orders objects oldest first: creationTimestamp, then namespace/name
// (docs/design.md: the oldest claim wins).
func byAge(a, b *metav1.ObjectMeta) int {
	if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
		return c
	}
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// domainState is a SenderDomain during compilation.
type domainState struct {
	sd      *v1alpha1.SenderDomain
	verdict *Verdict
	// unit is nil unless the SenderDomain is accepted; it lacks what did
	// not resolve unless resolved is true.
	unit     *domainUnit
	resolved bool
}

// senderDomains judges the SenderDomains. Their verdicts are final only
// after relayRoutes, which adds RouteRefused and InTable.
func (c *compiler) senderDomains() (map[string]*domainState, []Verdict) {
	sds := make([]*v1alpha1.SenderDomain, len(c.in.SenderDomains))
	for i := range c.in.SenderDomains {
		sds[i] = &c.in.SenderDomains[i]
	}
	slices.SortFunc(sds, func(a, b *v1alpha1.SenderDomain) int { return byAge(&a.ObjectMeta, &b.ObjectMeta) })

	states := map[string]*domainState{} // by namespace/name
	owners := map[string]*v1alpha1.SenderDomain{}
	verdicts := make([]Verdict, len(sds))
	for i, sd := range sds {
		v := &verdicts[i]
		v.Object = objectRef(KindSenderDomain, &sd.ObjectMeta)
		domain := string(sd.Spec.Domain)
		switch owner := owners[domain]; {
		case validateSenderDomain(sd) != "":
			v.Accepted = statusFalse(v1alpha1.ReasonInvalid, validateSenderDomain(sd))
		case !c.in.Policy.mayClaim(sd.Namespace, domain):
			v.Accepted = statusFalse(v1alpha1.ReasonDomainNotAllowed, fmt.Sprintf(
				"The guardrail policy does not let namespace %q claim domain %s", sd.Namespace, domain))
		case owner != nil:
			v.Accepted = statusFalse(v1alpha1.ReasonConflicted, fmt.Sprintf(
				"Domain %s is already claimed by SenderDomain %s/%s, which is older", domain, owner.Namespace, owner.Name))
		default:
			owners[domain] = sd
			v.Accepted = statusTrue(v1alpha1.ReasonAccepted, "Domain "+domain+" is claimed by this SenderDomain")
		}
		st := &domainState{sd: sd, verdict: v}
		states[sd.Namespace+"/"+sd.Name] = st
		u, refs := c.resolveDomain(sd, c.in.SecretsIncomplete || (c.in.KeysGeneratedLater && !v.Refused()))
		v.ResolvedRefs, v.SecretRefs = refs.status(), refs.readNames()
		if u != nil && u.DKIM != nil {
			if value, err := dkimRecordValue(c.signers[u.DKIM.KeyPEM]); err == nil {
				v.DKIM = &v1alpha1.DKIMRecord{Name: u.DKIM.Selector + "._domainkey." + domain, Value: value, SecretName: refs.dkimSecret}
			}
		}
		if !v.Refused() {
			st.unit, st.resolved = u, refs.ok()
		}
		if refs.toGenerate != "" {
			v.Pending = fmt.Sprintf("Waiting for the DKIM key to be generated into Secret %q", refs.toGenerate)
		}
	}
	return states, verdicts
}

// refProblems collects what is wrong with an object's Secret references.
type refProblems struct {
	missing, unknown, invalid []string
	dkimSecret                string
	// toGenerate is set when a generated DKIM key is not there yet and the
	// input may lack Secrets (postgate check): the key will come, nothing
	// is wrong, but the domain cannot be in the table yet.
	toGenerate string
	// read are the names of the Secrets looked up, found or not.
	read []string
}

// readNames returns the names of the Secrets looked up, sorted, once each.
func (p *refProblems) readNames() []string {
	slices.Sort(p.read)
	return slices.Compact(p.read)
}

// lookup returns the Secret namespace/name of the input, or nil, and
// records that the object's verdict depends on it.
func (c *compiler) lookup(p *refProblems, namespace, name string) *corev1.Secret {
	p.read = append(p.read, name)
	return c.secrets[namespace+"/"+name]
}

func (p *refProblems) status() Status {
	switch {
	case len(p.invalid) > 0:
		return statusFalse(v1alpha1.ReasonInvalidSecret, strings.Join(append(p.invalid, p.missing...), "; "))
	case len(p.missing) > 0:
		return statusFalse(v1alpha1.ReasonSecretNotFound, strings.Join(p.missing, "; "))
	case len(p.unknown) > 0:
		return Status{metav1.ConditionUnknown, v1alpha1.ReasonRefNotChecked, strings.Join(p.unknown, "; ")}
	case p.toGenerate != "":
		return statusTrue(v1alpha1.ReasonResolvedRefs, fmt.Sprintf("The DKIM key Secret %q is generated on first use", p.toGenerate))
	default:
		return statusTrue(v1alpha1.ReasonResolvedRefs, "All Secret references resolved")
	}
}

func (p *refProblems) ok() bool {
	return len(p.missing)+len(p.unknown)+len(p.invalid) == 0 && p.toGenerate == ""
}

// secretValue returns the value of key in the Secret namespace/name, or
// records why it cannot.
func (c *compiler) secretValue(p *refProblems, namespace, name, key, what string) (*corev1.Secret, []byte) {
	s := c.lookup(p, namespace, name)
	if s == nil {
		if c.in.SecretsIncomplete {
			p.unknown = append(p.unknown, fmt.Sprintf("Secret %q (%s) is not among the given manifests", name, what))
		} else {
			p.missing = append(p.missing, fmt.Sprintf("Secret %q (%s) not found", name, what))
		}
		return nil, nil
	}
	b, ok := s.Data[key]
	if !ok || len(b) == 0 {
		p.invalid = append(p.invalid, fmt.Sprintf("Secret %q (%s) has no key %q", name, what, key))
		return s, nil
	}
	return s, b
}

// secretID identifies a Secret's content for the cache: its identity and
// resourceVersion when the API server gave one, its bytes otherwise.
func secretID(s *corev1.Secret, key string, value []byte) string {
	if s.ResourceVersion != "" {
		return strings.Join([]string{s.Namespace, s.Name, string(s.UID), s.ResourceVersion, key}, "/")
	}
	return contentID([]byte(key), value)
}

// DKIMKeySecret returns the Secret name and data key that hold the signing
// key of sd.
func DKIMKeySecret(sd *v1alpha1.SenderDomain) (name, key string) {
	name = sd.DKIMKeySecretName()
	switch s := sd.Spec.Signing; {
	case name == "":
		return "", ""
	case s.KeySecretRef != nil:
		return name, cmp.Or(s.KeySecretRef.Key, DKIMKeySecretKey)
	default:
		return name, DKIMKeySecretKey
	}
}

// resolveDomain resolves sd's Secrets. With keyComes, a generated key that
// is missing is to come (toGenerate), not missing.
func (c *compiler) resolveDomain(sd *v1alpha1.SenderDomain, keyComes bool) (*domainUnit, *refProblems) {
	p := &refProblems{}
	u := &domainUnit{
		Object:           objectRef(KindSenderDomain, &sd.ObjectMeta),
		Name:             string(sd.Spec.Domain),
		SourceIP:         string(sd.Spec.SourceIP),
		MaxQueueLifetime: DefaultMaxQueueLifetime.String(),
		MXTLSPolicy:      v1alpha1.TLSPolicyOpportunistic,
		Account:          metaValue(&sd.ObjectMeta, AccountKey),
		CustomerNo:       metaValue(&sd.ObjectMeta, CustomerNoKey),
	}
	if s := sd.Spec.Signing; s != nil {
		name, key := DKIMKeySecret(sd)
		p.dkimSecret = name
		alg := cmp.Or(s.Algorithm, v1alpha1.DKIMAlgorithmRSA2048)
		if s.Generate != nil && keyComes && c.lookup(p, sd.Namespace, name) == nil {
			p.toGenerate = name
		} else if secret, pemBytes := c.secretValue(p, sd.Namespace, name, key, "DKIM key"); pemBytes != nil {
			v, err := c.cache.get(cacheKey{"dkim", string(alg) + "/" + secretID(secret, key, pemBytes)}, func() (any, error) {
				return parseDKIMKey(pemBytes, alg)
			})
			if err != nil {
				p.invalid = append(p.invalid, fmt.Sprintf("Secret %q key %q: unusable DKIM key: %v", name, key, err))
			} else {
				c.signers[string(pemBytes)] = v.(crypto.Signer)
				u.DKIM = &dkimUnit{Selector: string(s.Selector), Algorithm: alg, KeyPEM: string(pemBytes)}
			}
		}
	}
	if d := sd.Spec.Delivery; d != nil {
		if d.MaxQueueLifetime != nil && d.MaxQueueLifetime.Duration > 0 {
			u.MaxQueueLifetime = d.MaxQueueLifetime.Duration.String()
		}
		u.MXTLSPolicy = cmp.Or(d.TLSPolicy, v1alpha1.TLSPolicyOpportunistic)
		if w := d.Webhook; w != nil {
			key := cmp.Or(w.HMACSecretRef.Key, WebhookKeySecretKey)
			if _, b := c.secretValue(p, sd.Namespace, w.HMACSecretRef.Name, key, "webhook HMAC key"); b != nil {
				if len(b) < minHMACKeyBytes {
					p.invalid = append(p.invalid, fmt.Sprintf("Secret %q key %q: the HMAC key has %d bytes, fewer than %d", w.HMACSecretRef.Name, key, len(b), minHMACKeyBytes))
				} else {
					u.Webhook = &webhookUnit{URL: w.URL, HMACKey: b}
				}
			}
		}
	}
	return u, p
}

func (c *compiler) relayRoutes(domains map[string]*domainState) {
	rrs := make([]*v1alpha1.RelayRoute, len(c.in.RelayRoutes))
	for i := range c.in.RelayRoutes {
		rrs[i] = &c.in.RelayRoutes[i]
	}
	slices.SortFunc(rrs, func(a, b *v1alpha1.RelayRoute) int { return byAge(&a.ObjectMeta, &b.ObjectMeta) })

	owners := map[string]*v1alpha1.RelayRoute{} // by SenderDomain namespace/name
	refused := map[*domainState][]string{}
	verdicts := make([]Verdict, len(rrs))
	for i, rr := range rrs {
		v := &verdicts[i]
		v.Object = objectRef(KindRelayRoute, &rr.ObjectMeta)
		sdKey := rr.Namespace + "/" + rr.Spec.SenderDomainRef.Name
		st := domains[sdKey]
		switch {
		case validateRelayRoute(rr) != "":
			v.Accepted = statusFalse(v1alpha1.ReasonInvalid, validateRelayRoute(rr))
		case st == nil:
			v.Accepted = statusFalse(v1alpha1.ReasonSenderDomainNotFound, fmt.Sprintf(
				"SenderDomain %q not found in namespace %q", rr.Spec.SenderDomainRef.Name, rr.Namespace))
		case st.verdict.Refused():
			v.Accepted = statusFalse(v1alpha1.ReasonSenderDomainNotAccepted, fmt.Sprintf(
				"SenderDomain %q is not accepted (%s): %s", st.sd.Name, st.verdict.Accepted.Reason, st.verdict.Accepted.Message))
		case st.sd.Spec.Signing != nil:
			v.Accepted = statusFalse(v1alpha1.ReasonSigningEnabled, fmt.Sprintf(
				"SenderDomain %q signs its mail with DKIM, and a domain is either signed or relayed, never both: its mail is signed and goes to MX. Remove spec.signing from the SenderDomain to use this route", st.sd.Name))
			refused[st] = append(refused[st], rr.Name)
		case len(outsideDomain(rr, string(st.sd.Spec.Domain))) > 0:
			v.Accepted = statusFalse(v1alpha1.ReasonAddressOutsideDomain, fmt.Sprintf(
				"Sender addresses outside domain %s: %s", st.sd.Spec.Domain, strings.Join(outsideDomain(rr, string(st.sd.Spec.Domain)), ", ")))
		case owners[sdKey] != nil:
			o := owners[sdKey]
			v.Accepted = statusFalse(v1alpha1.ReasonConflicted, fmt.Sprintf(
				"SenderDomain %q already has RelayRoute %s/%s, which is older: a sender domain has one target relay", st.sd.Name, o.Namespace, o.Name))
		default:
			owners[sdKey] = rr
			v.Accepted = statusTrue(v1alpha1.ReasonAccepted, fmt.Sprintf("Mail from %s goes to %s:%d", st.sd.Spec.Domain, rr.Spec.Target.Host, targetPort(rr)))
		}
		u, refs := c.resolveRoute(rr)
		v.ResolvedRefs, v.SecretRefs = refs.status(), refs.readNames()
		switch {
		case v.Refused():
		case refs.ok() && st.resolved:
			st.unit.Route = u
			v.InTable = true
		default:
			// The route is the domain's (the oldest accepted), but it cannot
			// take effect: its mail is held, never sent by MX meanwhile.
			c.hold(st, v, u, refs)
		}
	}
	for st, names := range refused {
		slices.Sort(names)
		st.verdict.RouteRefused = &Status{metav1.ConditionTrue, v1alpha1.ReasonSigningEnabled, fmt.Sprintf(
			"RelayRoute %s refused: this domain signs with DKIM, so its mail is signed and goes to MX", strings.Join(names, ", "))}
	}
	for _, st := range domains {
		switch {
		case st.unit == nil:
		case st.unit.Hold != nil:
			st.verdict.InTable = true
			c.units = append(c.units, unit{Held: st.unit})
		case st.resolved:
			st.verdict.InTable = true
			c.units = append(c.units, unit{Domain: st.unit})
		case st.sd.Spec.Signing != nil && st.unit.DKIM == nil && st.verdict.Pending == "":
			// A signing domain without its key stays in the table as such,
			// rather than leaving it: its mail is refused for now, never
			// accepted unsigned. (A key still to be generated, in postgate
			// check, is Pending instead.)
			st.unit.SigningUnavailable = fmt.Sprintf("the DKIM key of %s is unavailable: %s", st.sd.Spec.Domain, st.verdict.ResolvedRefs.Message)
			st.verdict.Held = fmt.Sprintf("New mail from %s is refused with 451 4.3.0 at the end of DATA, never sent unsigned, while its DKIM key is unavailable: %s", st.sd.Spec.Domain, st.verdict.ResolvedRefs.Message)
			st.verdict.InTable = true
			c.units = append(c.units, unit{Held: st.unit})
		}
	}
	c.verdicts = append(c.verdicts, verdicts...)
}

// hold records that route v of domain st cannot take effect: the domain
// goes into the table with a hold on the mail the route would carry.
func (c *compiler) hold(st *domainState, v *Verdict, u *routeUnit, refs *refProblems) {
	var why []string
	if !refs.ok() {
		why = append(why, refs.status().Message)
	}
	if !st.resolved {
		why = append(why, fmt.Sprintf("its SenderDomain %q is not resolved: %s", st.sd.Name, st.verdict.ResolvedRefs.Message))
	}
	name := v.Object.Namespace + "/" + v.Object.Name
	reason := fmt.Sprintf("RelayRoute %s cannot take effect: %s", name, strings.Join(why, "; "))
	st.unit.Hold = &holdUnit{Route: v.Object, Host: u.Host, Reason: reason, Senders: u.Senders}
	mail := "Mail from " + string(st.sd.Spec.Domain)
	if len(u.Senders) > 0 {
		mail = "Mail from " + strings.Join(u.Senders, ", ")
	}
	held := fmt.Sprintf("%s is held (deferred with 4.4.4, never sent by MX) until the route takes effect or is deleted: %s", mail, reason)
	v.InTable, v.Held = true, held
	st.verdict.Held = held
}

func targetPort(rr *v1alpha1.RelayRoute) int {
	if rr.Spec.Target.Port == 0 {
		return 25
	}
	return int(rr.Spec.Target.Port)
}

// outsideDomain returns the sender addresses of rr that are not in domain.
func outsideDomain(rr *v1alpha1.RelayRoute, domain string) []string {
	var out []string
	for _, a := range rr.Spec.SenderAddresses {
		if domainOf(string(a)) != domain {
			out = append(out, string(a))
		}
	}
	return out
}

func (c *compiler) resolveRoute(rr *v1alpha1.RelayRoute) (*routeUnit, *refProblems) {
	p := &refProblems{}
	t := rr.Spec.Target
	u := &routeUnit{
		Object:    objectRef(KindRelayRoute, &rr.ObjectMeta),
		Host:      string(t.Host),
		Port:      targetPort(rr),
		TLSPolicy: cmp.Or(t.TLSPolicy, v1alpha1.TLSPolicyOpportunistic),
		TLSMode:   cmp.Or(t.TLSMode, v1alpha1.TLSModeSTARTTLS),
	}
	for _, a := range rr.Spec.SenderAddresses {
		u.Senders = append(u.Senders, strings.ToLower(string(a)))
	}
	slices.Sort(u.Senders)
	u.Senders = slices.Compact(u.Senders)
	if ref := t.CABundleSecretRef; ref != nil {
		key := cmp.Or(ref.Key, CABundleSecretKey)
		if secret, b := c.secretValue(p, rr.Namespace, ref.Name, key, "CA bundle"); b != nil {
			v, err := c.cache.get(cacheKey{"ca", secretID(secret, key, b)}, func() (any, error) { return parseCABundle(b) })
			if err != nil {
				p.invalid = append(p.invalid, fmt.Sprintf("Secret %q key %q: unusable CA bundle: %v", ref.Name, key, err))
			} else {
				c.pools[string(b)] = v.(*x509.CertPool)
				u.CABundle = string(b)
			}
		}
	}
	if ref := t.CredentialsSecretRef; ref != nil {
		user, password := c.basicAuth(p, rr.Namespace, ref.Name, "target credentials")
		u.Username, u.Password = user, password
	}
	return u, p
}

// basicAuth returns the username and password of a kubernetes.io/basic-auth
// Secret, or records why it cannot.
func (c *compiler) basicAuth(p *refProblems, namespace, name, what string) (user, password string) {
	s, u := c.secretValue(p, namespace, name, corev1.BasicAuthUsernameKey, what)
	if s == nil {
		return "", ""
	}
	if s.Type != corev1.SecretTypeBasicAuth {
		p.invalid = append(p.invalid, fmt.Sprintf("Secret %q (%s) has type %q, want %q", name, what, s.Type, corev1.SecretTypeBasicAuth))
		return "", ""
	}
	if u == nil {
		return "", ""
	}
	pw := s.Data[corev1.BasicAuthPasswordKey]
	if len(pw) == 0 {
		p.invalid = append(p.invalid, fmt.Sprintf("Secret %q (%s) has no key %q", name, what, corev1.BasicAuthPasswordKey))
		return "", ""
	}
	if strings.ContainsAny(string(u), "/\x00") {
		p.invalid = append(p.invalid, fmt.Sprintf("Secret %q (%s): the username contains '/' or NUL", name, what))
		return "", ""
	}
	return string(u), string(pw)
}

func (c *compiler) trustedNetworks() {
	tns := make([]*v1alpha1.TrustedNetwork, len(c.in.TrustedNetworks))
	for i := range c.in.TrustedNetworks {
		tns[i] = &c.in.TrustedNetworks[i]
	}
	overBound := c.namespaceBounds(tns)
	verdicts := make([]Verdict, len(tns))
	for i, tn := range tns {
		v := &verdicts[i]
		v.Object = objectRef(KindTrustedNetwork, &tn.ObjectMeta)
		auth := v1alpha1.SMTPAuthMode("")
		if a := tn.Spec.Authentication; a != nil {
			auth = cmp.Or(a.Mode, v1alpha1.SMTPAuthRequired)
		}
		prefixes, invalid := parseCIDRs(tn.Spec.CIDRs)
		switch tooBroad := c.tooBroad(prefixes, auth); {
		case invalid != "":
			v.Accepted = statusFalse(v1alpha1.ReasonInvalid, invalid)
		case tooBroad != "":
			v.Accepted = statusFalse(v1alpha1.ReasonNetworkTooBroad, tooBroad)
		case overBound[tn] != "":
			v.Accepted = statusFalse(v1alpha1.ReasonNetworkTooBroad, overBound[tn])
		default:
			v.Accepted = statusTrue(v1alpha1.ReasonAccepted, fmt.Sprintf("Clients in these networks may send as the SenderDomains of namespace %q", tn.Namespace))
		}
		u := &networkUnit{Object: v.Object, Auth: auth}
		for _, p := range prefixes {
			u.CIDRs = append(u.CIDRs, p.String())
		}
		p := &refProblems{}
		if a := tn.Spec.Authentication; a != nil {
			seen := map[string]string{}
			for _, ref := range a.SecretRefs {
				user, password := c.basicAuth(p, tn.Namespace, ref.Name, "SMTP AUTH user")
				if user == "" {
					continue
				}
				if other, dup := seen[user]; dup {
					p.invalid = append(p.invalid, fmt.Sprintf("Secrets %q and %q both define user %q", other, ref.Name, user))
					continue
				}
				seen[user] = ref.Name
				secret := c.secrets[tn.Namespace+"/"+ref.Name]
				salt := saltFor(tn.Namespace+"/"+ref.Name+"/"+string(secret.UID), user)
				h, err := c.cache.get(cacheKey{"auth", secretID(secret, user, salt) + "/" + contentID([]byte(password))}, func() (any, error) {
					return hashPassword(password, salt)
				})
				if err != nil {
					p.invalid = append(p.invalid, fmt.Sprintf("Secret %q: hashing the password: %v", ref.Name, err))
					continue
				}
				u.Users = append(u.Users, userUnit{Username: user, PasswordHash: h.(PasswordHash)})
			}
		}
		slices.SortFunc(u.Users, func(a, b userUnit) int { return cmp.Compare(a.Username, b.Username) })
		v.ResolvedRefs, v.SecretRefs = p.status(), p.readNames()
		if !v.Refused() && p.ok() {
			v.InTable = true
			c.units = append(c.units, unit{Network: u})
		}
	}
	c.verdicts = append(c.verdicts, verdicts...)
}

func (c *compiler) tooBroad(prefixes []netip.Prefix, auth v1alpha1.SMTPAuthMode) string {
	if auth == v1alpha1.SMTPAuthRequired {
		return ""
	}
	for _, p := range prefixes {
		if minBits := c.in.Policy.minPrefix(p.Addr().Is4()); p.Bits() < minBits {
			return fmt.Sprintf("Network %s is broader than /%d, the broadest the guardrail policy allows without AUTH: narrow it or set spec.authentication.mode Required", p, minBits)
		}
	}
	return ""
}

func parseCIDRs(cidrs []v1alpha1.CIDR) ([]netip.Prefix, string) {
	if len(cidrs) == 0 {
		return nil, "spec.cidrs: at least one network is required"
	}
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, s := range cidrs {
		p, err := netip.ParsePrefix(string(s))
		switch {
		case err != nil:
			return nil, fmt.Sprintf("spec.cidrs: %q is not a network in CIDR notation", s)
		case p.Addr().Is4In6():
			return nil, fmt.Sprintf("spec.cidrs: %q is an IPv4-mapped IPv6 network, which is not allowed: write the IPv4 network", s)
		case p.Masked() != p:
			return nil, fmt.Sprintf("spec.cidrs: %q must be written as its network address %s", s, p.Masked())
		}
		out = append(out, p)
	}
	return out, ""
}

// The schema validates every object the API server stores; these checks
// repeat the few that the table's soundness depends on, for input that did
// not pass through an API server.
var domainName = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?[.])+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$`)

func isDomainName(s string) bool { return len(s) <= 253 && domainName.MatchString(s) }

func validateSenderDomain(sd *v1alpha1.SenderDomain) string {
	s := sd.Spec
	if !isDomainName(string(s.Domain)) {
		return fmt.Sprintf("spec.domain: %q is not a lowercase fully-qualified domain name", s.Domain)
	}
	if s.SourceIP != "" {
		if a, err := netip.ParseAddr(string(s.SourceIP)); err != nil || !v1alpha1.IsSourceAddress(a) {
			return fmt.Sprintf("spec.sourceIP: %q is not an address mail can be sent from", s.SourceIP)
		}
	}
	if g := s.Signing; g != nil {
		if !v1alpha1.IsDKIMSelector(string(g.Selector)) {
			return fmt.Sprintf("spec.signing.selector: %q is not a DKIM selector", g.Selector)
		}
		if (g.KeySecretRef == nil) == (g.Generate == nil) {
			return "spec.signing: exactly one of keySecretRef and generate must be set"
		}
	}
	if d := s.Delivery; d != nil {
		if l := d.MaxQueueLifetime; l != nil && l.Duration != 0 && (l.Duration < time.Minute || l.Duration > 120*time.Hour) {
			return fmt.Sprintf("spec.delivery.maxQueueLifetime: %s is not from 1m to 120h", l.Duration)
		}
		if w := d.Webhook; w != nil {
			if err := v1alpha1.CheckWebhookURL(w.URL); err != nil {
				return fmt.Sprintf("spec.delivery.webhook.url: %q %v", w.URL, err)
			}
		}
	}
	return validateNotifyMeta(&sd.ObjectMeta)
}

func validateRelayRoute(rr *v1alpha1.RelayRoute) string {
	t := rr.Spec.Target
	if !isDomainName(string(t.Host)) {
		return fmt.Sprintf("spec.target.host: %q is not a lowercase fully-qualified host name", t.Host)
	}
	if t.Port < 0 || t.Port > 65535 {
		return fmt.Sprintf("spec.target.port: %d is not from 1 to 65535", t.Port)
	}
	if len(rr.Spec.SenderAddresses) > 10 {
		return "spec.senderAddresses: at most 10 addresses"
	}
	for _, a := range rr.Spec.SenderAddresses {
		if !v1alpha1.IsEmailAddress(string(a)) {
			return fmt.Sprintf("spec.senderAddresses: %q is not an email address", a)
		}
	}
	return ""
}
