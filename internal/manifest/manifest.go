// Package manifest reads Kubernetes YAML manifests of postgate's resources
// (SenderDomain, RelayRoute, TrustedNetwork) and the Secrets they reference,
// and judges each object the way the API server would on create: it owns the
// reading of files and directories, the decoding of documents with their
// source positions, and the admission of each object with the CRD schemas
// from config/crd (pruning, defaulting, OpenAPI, list-type and CEL
// validation, run by the API server's own libraries), and Input hands the
// valid objects to the compiler. `postgate check` and the standalone relay
// (`postgate relay --manifests`, docs/design.md contract 4) read manifests
// through it.
//
// Unknown fields in the three kinds and in Secrets are field errors of the
// object, as with the strict field validation kubectl asks the API server
// for; the API server would also report the other errors of the object only
// once the unknown fields are gone, this package reports them at once.
//
// Two kinds of problems are kept apart. Input that cannot be read (a file
// that cannot be opened, broken YAML, a document without apiVersion, kind or
// metadata.name, the same object twice) is an error of Load, positioned as
// file:line. An object that can be read but that the API server would refuse
// is not: it is in the Set with its field errors (Object.Errors), so that a
// caller can report it and go on with the others.
//
// File order stands in for creation time: the objects get creation
// timestamps that increase with their position across all inputs, so that
// "the oldest wins" rules follow the order of the files.
package manifest

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// Resource is a typed object of a Set: *v1alpha1.SenderDomain,
// *v1alpha1.RelayRoute, *v1alpha1.TrustedNetwork or *corev1.Secret.
type Resource interface {
	metav1.Object
	runtime.Object
}

// Position is a place in the input: a file and a 1-based line, or 0 when
// the problem is with the file as a whole.
type Position struct {
	File string
	Line int
}

// String formats the position as file:line, the form editors and CI
// annotations understand.
func (p Position) String() string {
	if p.Line <= 0 {
		return p.File
	}
	return p.File + ":" + strconv.Itoa(p.Line)
}

// Error is input that cannot be read, with where it is. Load joins them
// (errors.Join), so errors.As finds the first.
type Error struct {
	Pos Position
	Err error
}

func (e *Error) Error() string { return e.Pos.String() + ": " + e.Err.Error() }

func (e *Error) Unwrap() error { return e.Err }

// Object is one object of the input, admitted the way the API server admits
// it on create.
type Object struct {
	// Pos is where the object starts (the line of its first field).
	Pos Position

	// Kind is SenderDomain, RelayRoute, TrustedNetwork or Secret.
	Kind string

	// Resource is the typed object after defaulting, with system metadata
	// as the API server would set it: the namespace (the Loader's default
	// when the manifest has none), a UID derived from kind, namespace and
	// name, generation 1, and a creation timestamp that follows input
	// order. A Secret has its stringData merged into data. When Errors is
	// not empty, Resource may hold only the kind and metadata.
	Resource Resource

	// Errors are the reasons the API server would refuse the object, with
	// its field paths and messages; empty when it would accept it.
	Errors field.ErrorList

	// lines maps field paths (field.Path.String form, map keys as
	// .key) to the line they are written on.
	lines map[string]int
}

// Valid reports whether the API server would accept the object.
func (o *Object) Valid() bool { return len(o.Errors) == 0 }

// String names the object as "Kind namespace/name".
func (o *Object) String() string {
	return o.Kind + " " + o.Resource.GetNamespace() + "/" + o.Resource.GetName()
}

// FieldPos returns where the field at path (as field.Path.String prints
// it, such as "spec.target.host" or "spec.cidrs[1]") is written, or the
// nearest enclosing field that is, or the start of the object. Use it to
// place a field error: o.FieldPos(err.Field).
func (o *Object) FieldPos(path string) Position {
	return Position{File: o.Pos.File, Line: lookupLine(o.lines, path, o.Pos.Line)}
}

// Skipped is a document of a kind this package does not read (a Namespace,
// a ConfigMap, a Deployment, ...), so that a whole GitOps folder can be
// given.
type Skipped struct {
	Pos        Position
	APIVersion string
	Kind       string
	Namespace  string // as written; empty for cluster-scoped objects
	Name       string
}

// Set is what Load read: the objects of the understood kinds in input
// order, valid or not, and the documents it skipped.
type Set struct {
	Objects []*Object
	Skipped []Skipped

	byKey map[objectKey]*Object
}

// objectKey identifies an object: no two objects of a Set share one.
type objectKey struct {
	group, kind, namespace, name string
}

// Lookup returns the object of kind (SenderDomain, RelayRoute,
// TrustedNetwork or Secret) with that namespace and name, or nil.
func (s *Set) Lookup(kind, namespace, name string) *Object {
	group := v1alpha1.GroupVersion.Group
	if kind == "Secret" {
		group = ""
	}
	return s.byKey[objectKey{group, kind, namespace, name}]
}

// SenderDomains returns the valid SenderDomains in input order.
func (s *Set) SenderDomains() []*v1alpha1.SenderDomain { return valid[*v1alpha1.SenderDomain](s) }

// RelayRoutes returns the valid RelayRoutes in input order.
func (s *Set) RelayRoutes() []*v1alpha1.RelayRoute { return valid[*v1alpha1.RelayRoute](s) }

// TrustedNetworks returns the valid TrustedNetworks in input order.
func (s *Set) TrustedNetworks() []*v1alpha1.TrustedNetwork { return valid[*v1alpha1.TrustedNetwork](s) }

// Secrets returns the valid Secrets in input order.
func (s *Set) Secrets() []*corev1.Secret { return valid[*corev1.Secret](s) }

func valid[T Resource](s *Set) []T {
	var out []T
	for _, o := range s.Objects {
		if t, ok := o.Resource.(T); ok && o.Valid() {
			out = append(out, t)
		}
	}
	return out
}

// Invalid returns the objects the API server would refuse, in input order.
func (s *Set) Invalid() []*Object {
	var out []*Object
	for _, o := range s.Objects {
		if !o.Valid() {
			out = append(out, o)
		}
	}
	return out
}

// lookupLine finds the line of path in lines, walking up to the enclosing
// fields until one is found, else returns def.
func lookupLine(lines map[string]int, path string, def int) int {
	path = normalizePath(path)
	for {
		if line, ok := lines[path]; ok {
			return line
		}
		if path == "" {
			return def
		}
		cut := max(strings.LastIndexByte(path, '.'), strings.LastIndexByte(path, '['), 0)
		path = path[:cut]
	}
}

// normalizePath writes map keys, which field.Path prints as [key], as
// .key, the form the position index uses for every mapping key; indices
// stay [i].
func normalizePath(path string) string {
	if !strings.Contains(path, "[") {
		return path
	}
	var b strings.Builder
	for path != "" {
		i := strings.IndexByte(path, '[')
		end := strings.IndexByte(path[max(i, 0):], ']') + max(i, 0)
		if i < 0 || end < i {
			b.WriteString(path)
			break
		}
		b.WriteString(path[:i])
		key := path[i+1 : end]
		if _, err := strconv.Atoi(key); err == nil {
			b.WriteString(path[i : end+1])
		} else {
			b.WriteString("." + key)
		}
		path = path[end+1:]
	}
	return b.String()
}

// errorAt returns an *Error at pos.
func errorAt(pos Position, format string, args ...any) error {
	return &Error{Pos: pos, Err: fmt.Errorf(format, args...)}
}
