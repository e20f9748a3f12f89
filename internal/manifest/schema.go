package manifest

import (
	"context"
	"fmt"
	"io/fs"
	"strconv"
	"strings"

	"k8s.io/apiextensions-apiserver/pkg/apis/apiextensions"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	structuralschema "k8s.io/apiextensions-apiserver/pkg/apiserver/schema"
	"k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel"
	structuraldefaulting "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/defaulting"
	structurallisttype "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/listtype"
	schemaobjectmeta "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/objectmeta"
	structuralpruning "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/pruning"
	apiservervalidation "k8s.io/apiextensions-apiserver/pkg/apiserver/validation"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	celconfig "k8s.io/apiserver/pkg/apis/cel"
	"sigs.k8s.io/yaml"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
)

// newTyped returns an empty object of the Go type of a kind the CRDs define,
// or nil. A CRD without a Go type is a programming error that NewLoader
// reports.
func newTyped(gvk schema.GroupVersionKind) Resource {
	switch gvk {
	case v1alpha1.GroupVersion.WithKind("SenderDomain"):
		return &v1alpha1.SenderDomain{}
	case v1alpha1.GroupVersion.WithKind("RelayRoute"):
		return &v1alpha1.RelayRoute{}
	case v1alpha1.GroupVersion.WithKind("TrustedNetwork"):
		return &v1alpha1.TrustedNetwork{}
	}
	return nil
}

// kindSchema is one version of a CRD, compiled the way the API server's
// custom resource handler compiles it (apiextensions-apiserver
// pkg/apiserver/customresource_handler.go and
// pkg/registry/customresource/strategy.go).
type kindSchema struct {
	gvk        schema.GroupVersionKind
	namespaced bool
	structural *structuralschema.Structural
	validator  apiservervalidation.SchemaValidator
	cel        *cel.Validator
}

// compileCRDs reads every CustomResourceDefinition in fsys (*.yaml at its
// root) and compiles each served version with a schema.
func compileCRDs(fsys fs.FS) (map[schema.GroupVersionKind]*kindSchema, error) {
	files, err := fs.Glob(fsys, "*.yaml")
	if err != nil {
		return nil, err
	}
	kinds := map[schema.GroupVersionKind]*kindSchema{}
	for _, name := range files {
		data, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		var crd apiextensionsv1.CustomResourceDefinition
		if err := yaml.UnmarshalStrict(data, &crd); err != nil {
			return nil, fmt.Errorf("CRD %s: %w", name, err)
		}
		for _, v := range crd.Spec.Versions {
			if !v.Served || v.Schema == nil {
				continue
			}
			gvk := schema.GroupVersionKind{Group: crd.Spec.Group, Version: v.Name, Kind: crd.Spec.Names.Kind}
			k, err := compileVersion(gvk, crd.Spec.Scope == apiextensionsv1.NamespaceScoped, v.Schema)
			if err != nil {
				return nil, fmt.Errorf("CRD %s version %s: %w", name, v.Name, err)
			}
			kinds[gvk] = k
		}
	}
	for _, kind := range []string{"SenderDomain", "RelayRoute", "TrustedNetwork"} {
		if gvk := v1alpha1.GroupVersion.WithKind(kind); kinds[gvk] == nil {
			return nil, fmt.Errorf("no CRD defines %s", gvk)
		}
	}
	return kinds, nil
}

func compileVersion(gvk schema.GroupVersionKind, namespaced bool, v *apiextensionsv1.CustomResourceValidation) (*kindSchema, error) {
	if newTyped(gvk) == nil {
		return nil, fmt.Errorf("no Go type for %s", gvk)
	}
	internal := &apiextensions.CustomResourceValidation{}
	if err := apiextensionsv1.Convert_v1_CustomResourceValidation_To_apiextensions_CustomResourceValidation(v, internal, nil); err != nil {
		return nil, err
	}
	s, err := structuralschema.NewStructural(internal.OpenAPIV3Schema)
	if err != nil {
		return nil, err
	}
	if errs := structuralschema.ValidateStructural(nil, s); len(errs) > 0 {
		return nil, errs.ToAggregate()
	}
	// As the API server does: defaults are pruned once, on a copy, so that a
	// default never adds a field the schema does not know.
	s = s.DeepCopy()
	if err := structuraldefaulting.PruneDefaults(s); err != nil {
		return nil, err
	}
	validator, _, err := apiservervalidation.NewSchemaValidator(internal.OpenAPIV3Schema)
	if err != nil {
		return nil, err
	}
	return &kindSchema{
		gvk:        gvk,
		namespaced: namespaced,
		structural: s,
		validator:  validator,
		cel:        cel.NewValidator(s, true, celconfig.PerCallLimit),
	}, nil
}

// admit runs what the API server runs between receiving a create request
// with strict field validation and storing the object, in the same order:
// decoding metadata, pruning unknown fields (reported, as the strict decoder
// reports them), structural defaulting, PrepareForCreate (status dropped,
// system metadata set by prepare), then validation of the metadata, the
// OpenAPI schema, embedded objects, list types, and the CEL rules, the last
// only when no blocking error was found before them. u is modified in place.
func (k *kindSchema) admit(u map[string]any, prepare func(*metav1.ObjectMeta)) (Resource, field.ErrorList) {
	var errs field.ErrorList
	meta, _, unknown, err := schemaobjectmeta.GetObjectMetaWithOptions(u, schemaobjectmeta.ObjectMetaOptions{ReturnUnknownFieldPaths: true})
	if err != nil {
		errs = append(errs, field.Invalid(field.NewPath("metadata"), field.OmitValueType{}, err.Error()))
		meta = &metav1.ObjectMeta{}
		// Keep the identity the caller has already read, so that the
		// object can still be named in reports.
		if m, ok := u["metadata"].(map[string]any); ok {
			meta.Name, _ = m["name"].(string)
			meta.Namespace, _ = m["namespace"].(string)
		}
	}
	unknown = append(unknown, structuralpruning.PruneWithOptions(u, k.structural, true, structuralschema.UnknownFieldPathOptions{TrackUnknownFieldPaths: true})...)
	structuraldefaulting.PruneNonNullableNullsWithoutDefaults(u, k.structural)
	ferr, embeddedUnknown := schemaobjectmeta.CoerceWithOptions(nil, u, k.structural, false, schemaobjectmeta.CoerceOptions{ReturnUnknownFieldPaths: true})
	unknown = append(unknown, embeddedUnknown...)
	errs = append(errs, unknownFieldErrors(unknown)...)
	if ferr != nil {
		errs = append(errs, ferr)
	}

	structuraldefaulting.Default(u, k.structural)

	delete(u, "status") // the status subresource: create cannot set status
	prepare(meta)
	if err := schemaobjectmeta.SetObjectMeta(u, meta); err != nil {
		errs = append(errs, field.InternalError(field.NewPath("metadata"), err))
	}
	u["apiVersion"] = k.gvk.GroupVersion().String()
	u["kind"] = k.gvk.Kind

	ctx := context.Background()
	var verrs field.ErrorList
	verrs = append(verrs, apivalidation.ValidateObjectMeta(meta, k.namespaced, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))...)
	verrs = append(verrs, apiservervalidation.ValidateCustomResource(nil, u, k.validator)...)
	verrs = append(verrs, schemaobjectmeta.Validate(ctx, nil, u, k.structural, false)...)
	verrs = append(verrs, structurallisttype.ValidateListSetsAndMaps(nil, k.structural, u)...)
	if blocked := blockingError(verrs); blocked != nil {
		verrs = append(verrs, blocked)
	} else {
		celErrs, _ := k.cel.Validate(ctx, nil, k.structural, u, nil, celconfig.RuntimeCELCostBudget)
		verrs = append(verrs, celErrs...)
	}
	errs = append(errs, verrs...)

	obj := newTyped(k.gvk)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u, obj); err != nil {
		// Only an invalid object may fail to convert (a string where the
		// type has a number, say); keep its identity for reports.
		if len(errs) == 0 {
			errs = append(errs, field.InternalError(nil, fmt.Errorf("converting to %T: %w", obj, err)))
		}
		obj = newTyped(k.gvk)
		ident := map[string]any{"apiVersion": u["apiVersion"], "kind": u["kind"], "metadata": u["metadata"]}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(ident, obj); err != nil {
			errs = append(errs, field.InternalError(field.NewPath("metadata"), err))
		}
	}
	return obj, errs
}

// blockingError is hasBlockingErr of the API server's custom resource
// strategy: after an OpenAPI type, required, enum, length or item-count
// failure the CEL rules are not run, since they may assume what failed.
func blockingError(errs field.ErrorList) *field.Error {
	for _, err := range errs {
		switch err.Type {
		case field.ErrorTypeNotSupported, field.ErrorTypeRequired, field.ErrorTypeTooLong, field.ErrorTypeTooMany, field.ErrorTypeTypeInvalid:
			return field.Invalid(nil, nil, "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation")
		}
	}
	return nil
}

// unknownFieldErrors turns the unknown field paths of the pruner and of the
// strict JSON decoder ("spec.target.tlsPolice", "spec.cidrs[0].x") into
// field errors. The API server refuses such an object with `strict decoding
// error: unknown field "..."` when field validation is Strict, which is what
// kubectl asks for by default.
func unknownFieldErrors(paths []string) field.ErrorList {
	var errs field.ErrorList
	for _, p := range paths {
		errs = append(errs, field.Forbidden(parsePath(p), "unknown field"))
	}
	return errs
}

// parsePath parses a field path as field.Path.String prints it, with
// numeric indices and map keys in brackets.
func parsePath(s string) *field.Path {
	var p *field.Path
	for s != "" {
		switch s[0] {
		case '[':
			end := strings.IndexByte(s, ']')
			if end < 0 {
				end = len(s)
			}
			sub := s[1:end]
			if i, err := strconv.Atoi(sub); err == nil {
				p = p.Index(i)
			} else {
				p = p.Key(sub)
			}
			s = s[min(end+1, len(s)):]
		case '.':
			s = s[1:]
		default:
			end := strings.IndexAny(s, ".[")
			if end < 0 {
				end = len(s)
			}
			if p == nil {
				p = field.NewPath(s[:end])
			} else {
				p = p.Child(s[:end])
			}
			s = s[end:]
		}
	}
	return p
}
