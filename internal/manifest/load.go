package manifest

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/google/uuid"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// Loader reads manifests. NewLoader compiles the CRD schemas and their CEL
// rules, which takes a moment, so keep a Loader for repeated loads (the
// standalone relay reloads on every change). A Loader is safe for concurrent
// use.
type Loader struct {
	namespace string
	recursive bool
	kinds     map[schema.GroupVersionKind]*kindSchema
}

// Option configures a Loader.
type Option func(*Loader)

// WithNamespace sets the namespace of objects whose manifest has none,
// "default" unless set, as kubectl's --namespace does.
func WithNamespace(namespace string) Option {
	return func(l *Loader) { l.namespace = namespace }
}

// WithRecursive makes Load read the subdirectories of a directory too, as
// kubectl apply -R does. Without it, only the files directly in a directory
// are read, as kubectl apply -f dir does.
func WithRecursive() Option {
	return func(l *Loader) { l.recursive = true }
}

// NewLoader returns a Loader that judges objects by the embedded CRDs (a
// copy of config/crd/bases, kept in sync by make manifests).
func NewLoader(opts ...Option) (*Loader, error) {
	l := &Loader{namespace: metav1.NamespaceDefault}
	for _, o := range opts {
		o(l)
	}
	kinds, err := compileCRDs(embeddedCRDs())
	if err != nil {
		return nil, fmt.Errorf("compiling the embedded CRDs: %w", err)
	}
	l.kinds = kinds
	return l, nil
}

// Load reads paths with a new Loader and its defaults.
func Load(paths ...string) (*Set, error) {
	l, err := NewLoader()
	if err != nil {
		return nil, err
	}
	return l.Load(paths...)
}

// Load reads the manifests in paths, in the order given. A path is a file,
// read whatever its name, or a directory, whose *.yaml, *.yml and *.json
// files are read in order of their names (hidden files and kustomization.yaml
// excepted; subdirectories only WithRecursive). A file holds any number of
// YAML documents separated by "---" lines, or one JSON object; empty
// documents are skipped, and a v1 List stands for its items.
//
// The documents of kinds SenderDomain, RelayRoute and TrustedNetwork
// (postgate.io/v1alpha1) and Secret (v1) become the Objects of the Set; those
// of other kinds are listed in Skipped. Unknown fields in these kinds are
// field errors, as with the API server's strict field validation.
//
// The error, when not nil, joins an *Error for each input that cannot be
// read (see the package documentation); the Set then still holds whatever
// could be read, for reporting, but it is not the whole input and should not
// be served.
func (l *Loader) Load(paths ...string) (*Set, error) {
	b := l.newBuilder()
	for _, path := range paths {
		files, errs := listFiles(path, l.recursive)
		b.errs = append(b.errs, errs...)
		for _, f := range files {
			data, err := os.ReadFile(f) // #nosec G304 -- reading the files the user names is the point
			if err != nil {
				b.errs = append(b.errs, pathError(f, err))
				continue
			}
			b.file(f, data)
		}
	}
	return b.set, errors.Join(b.errs...)
}

// Files returns the files Load reads for paths, in the order it reads
// them: a watcher that hashes these sees every change Load would, and
// nothing it would not (an editor's hidden temporary file, a README).
func (l *Loader) Files(paths ...string) ([]string, error) {
	var all []string
	var errs []error
	for _, path := range paths {
		files, e := listFiles(path, l.recursive)
		all, errs = append(all, files...), append(errs, e...)
	}
	return all, errors.Join(errs...)
}

// Parse reads one file's content, named name in positions, as Load reads a
// file: for standard input, or manifests that do not come from files.
func (l *Loader) Parse(name string, data []byte) (*Set, error) {
	b := l.newBuilder()
	b.file(name, data)
	return b.set, errors.Join(b.errs...)
}

// builder accumulates one Load.
type builder struct {
	l    *Loader
	set  *Set
	errs []error
}

func (l *Loader) newBuilder() *builder {
	return &builder{l: l, set: &Set{byKey: map[objectKey]*Object{}}}
}

func (b *builder) file(name string, data []byte) {
	for _, doc := range splitDocuments(data) {
		u, lines, err := decode(name, doc)
		if err != nil {
			b.errs = append(b.errs, err)
			continue
		}
		if u != nil {
			b.object(name, u, lines, "")
		}
	}
}

// object reads the object u, at path prefix of its document ("" for the
// document itself, "items[i]" for an item of a List).
func (b *builder) object(file string, u map[string]any, docLines map[string]int, prefix string) {
	lines := subLines(docLines, prefix)
	pos := Position{File: file, Line: lookupLine(lines, "", 0)}
	fail := func(path, format string, args ...any) {
		b.errs = append(b.errs, errorAt(Position{File: file, Line: lookupLine(lines, path, pos.Line)}, format, args...))
	}
	apiVersion, ok := u["apiVersion"].(string)
	if !ok || apiVersion == "" {
		fail("apiVersion", "apiVersion is missing or not a string")
		return
	}
	kind, ok := u["kind"].(string)
	if !ok || kind == "" {
		fail("kind", "kind is missing or not a string")
		return
	}
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		fail("apiVersion", "%w", err)
		return
	}
	if gv.Group == "" && gv.Version == "v1" && kind == "List" {
		items, ok := u["items"].([]any)
		if !ok && u["items"] != nil {
			fail("items", "items of a List must be a list")
			return
		}
		for i, item := range items {
			p := prefix + "items[" + strconv.Itoa(i) + "]"
			m, ok := item.(map[string]any)
			if !ok {
				b.errs = append(b.errs, errorAt(Position{File: file, Line: lookupLine(docLines, p, pos.Line)}, "an item of a List must be an object"))
				continue
			}
			b.object(file, m, docLines, p)
		}
		return
	}
	gvk := gv.WithKind(kind)
	ks := b.l.kinds[gvk]
	isSecret := isSecretKind(gvk)
	if ks == nil && !isSecret {
		if gv.Group == v1alpha1.GroupVersion.Group {
			// What kubectl says when the API server serves no such kind.
			fail("kind", "no matches for kind %q in version %q", kind, apiVersion)
			return
		}
		namespace, name, _ := identity(u)
		b.set.Skipped = append(b.set.Skipped, Skipped{Pos: pos, APIVersion: apiVersion, Kind: kind, Namespace: namespace, Name: name})
		return
	}
	namespace, name, err := identity(u)
	if err != nil {
		fail("metadata.name", "%s %w", kind, err)
		return
	}
	if namespace == "" {
		namespace = b.l.namespace
	}
	key := objectKey{gvk.Group, kind, namespace, name}
	if first := b.set.byKey[key]; first != nil {
		fail("metadata.name", "%s %s/%s is defined twice: first at %s", kind, namespace, name, first.Pos)
		return
	}

	index := len(b.set.Objects)
	prepare := func(m *metav1.ObjectMeta) {
		m.Namespace = namespace
		m.Name = name
		m.UID = uid(key)
		m.CreationTimestamp = creationTime(index)
		m.ResourceVersion = ""
		if !isSecret {
			m.Generation = 1 // as PrepareForCreate of custom resources
		}
	}
	obj := &Object{Pos: pos, Kind: kind, lines: lines}
	if isSecret {
		obj.Resource, obj.Errors = admitSecret(u, prepare)
	} else {
		obj.Resource, obj.Errors = ks.admit(u, prepare)
	}
	b.set.Objects = append(b.set.Objects, obj)
	b.set.byKey[key] = obj
}

// identity reads the namespace and name of an object, which must have a
// name: objects read from files cannot have one generated.
func identity(u map[string]any) (namespace, name string, err error) {
	m, ok := u["metadata"].(map[string]any)
	if !ok {
		if u["metadata"] == nil {
			return "", "", errors.New("has no metadata.name")
		}
		return "", "", errors.New("has a metadata that is not an object")
	}
	if ns, ok := m["namespace"]; ok && ns != nil {
		if namespace, ok = ns.(string); !ok {
			return "", "", errors.New("has a metadata.namespace that is not a string")
		}
	}
	switch n := m["name"].(type) {
	case string:
		if n != "" {
			return namespace, n, nil
		}
	case nil:
	default:
		return namespace, "", errors.New("has a metadata.name that is not a string")
	}
	if _, ok := m["generateName"]; ok {
		return namespace, "", errors.New("has no metadata.name (generateName is not supported: objects read from files need a name)")
	}
	return namespace, "", errors.New("has no metadata.name")
}

// uid derives an object's UID from what identifies it, so that it stays the
// same across loads wherever the object moves in the files.
func uid(k objectKey) types.UID {
	return types.UID(uuid.NewSHA1(uuid.NameSpaceURL, []byte("https://postgate.io/manifest/"+k.group+"/"+k.kind+"/"+k.namespace+"/"+k.name)).String())
}

// creationTime is the creation timestamp of the object at index in input
// order: 2000-01-01T00:00:00Z plus index seconds. Timestamps have a
// resolution of one second in the API.
func creationTime(index int) metav1.Time {
	return metav1.NewTime(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(index) * time.Second))
}
