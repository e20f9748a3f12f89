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
	names := obj.SecretNames()
	slices.Sort(names)
	return slices.Compact(names)
}
