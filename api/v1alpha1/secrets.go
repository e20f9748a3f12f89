package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// DefaultDKIMKeySecretName is the default of generate.secretName
// (DKIMKeyGeneration): postgate-dkim-<selector>.<domain>, a valid Secret
// name (an RFC 1123 subdomain of at most 253 characters). A longer name is
// cut, and ends with '-' and 10 hexadecimal digits of the SHA-256 of the
// whole name, so that two domains that share their first 240 characters
// still get Secrets of their own; names that fit are never changed, so
// that existing installations keep their keys.
func DefaultDKIMKeySecretName(domain, selector string) string {
	const maxName = 253
	name := "postgate-dkim-" + selector + "." + domain
	if len(name) <= maxName {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	suffix := "-" + hex.EncodeToString(sum[:5])
	return strings.TrimRight(name[:maxName-len(suffix)], ".-") + suffix
}

// DKIMKeySecretName is the name of the Secret, in the SenderDomain's
// namespace, that holds its signing key: keySecretRef's, generate's
// secretName, or that name's default; "" when it does not sign.
func (o *SenderDomain) DKIMKeySecretName() string {
	s := o.Spec.Signing
	switch {
	case s == nil:
		return ""
	case s.KeySecretRef != nil:
		return s.KeySecretRef.Name
	case s.Generate != nil && s.Generate.SecretName != "":
		return s.Generate.SecretName
	default:
		return DefaultDKIMKeySecretName(string(o.Spec.Domain), string(s.Selector))
	}
}

// SecretNames returns the names of the Secrets, in the SenderDomain's
// namespace, that its spec names, defaults included: the signing key's and
// the webhook's HMAC key's.
func (o *SenderDomain) SecretNames() []string {
	var names []string
	if name := o.DKIMKeySecretName(); name != "" {
		names = append(names, name)
	}
	if d := o.Spec.Delivery; d != nil && d.Webhook != nil {
		names = append(names, d.Webhook.HMACSecretRef.Name)
	}
	return names
}

// SecretNames returns the names of the Secrets, in the RelayRoute's
// namespace, that its spec names: the target's CA bundle and credentials.
func (o *RelayRoute) SecretNames() []string {
	var names []string
	if ref := o.Spec.Target.CABundleSecretRef; ref != nil {
		names = append(names, ref.Name)
	}
	if ref := o.Spec.Target.CredentialsSecretRef; ref != nil {
		names = append(names, ref.Name)
	}
	return names
}

// SecretNames returns the names of the Secrets, in the TrustedNetwork's
// namespace, that its spec names: one per SMTP AUTH user.
func (o *TrustedNetwork) SecretNames() []string {
	var names []string
	if a := o.Spec.Authentication; a != nil {
		for _, ref := range a.SecretRefs {
			names = append(names, ref.Name)
		}
	}
	return names
}
