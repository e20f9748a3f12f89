package routing

import (
	"slices"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// SecretRefs returns the names of the Secrets, in obj's namespace, that
// Compile may look up for obj: a caller that reads Secrets on demand reads
// these before compiling. What Compile did look up is in the verdict
// (Verdict.SecretRefs), always among these.
func SecretRefs(obj v1alpha1.Object) []string {
	var names []string
	switch o := obj.(type) {
	case *v1alpha1.SenderDomain:
		if name, _ := DKIMKeySecret(o); name != "" {
			names = append(names, name)
		}
		if d := o.Spec.Delivery; d != nil && d.Webhook != nil {
			names = append(names, d.Webhook.HMACSecretRef.Name)
		}
	case *v1alpha1.RelayRoute:
		if ref := o.Spec.Target.CABundleSecretRef; ref != nil {
			names = append(names, ref.Name)
		}
		if ref := o.Spec.Target.CredentialsSecretRef; ref != nil {
			names = append(names, ref.Name)
		}
	case *v1alpha1.TrustedNetwork:
		if a := o.Spec.Authentication; a != nil {
			for _, ref := range a.SecretRefs {
				names = append(names, ref.Name)
			}
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}
