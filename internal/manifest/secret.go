package manifest

import (
	"encoding/base64"
	"encoding/json"
	"errors"

	corev1 "k8s.io/api/core/v1"
	schemaobjectmeta "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/objectmeta"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	kjson "sigs.k8s.io/json"
)

// isSecretKind reports whether gvk is v1 Secret, the one core kind this
// package reads.
func isSecretKind(gvk schema.GroupVersionKind) bool {
	return gvk.Group == "" && gvk.Version == "v1" && gvk.Kind == "Secret"
}

// admitSecret decodes a v1 Secret strictly, merges stringData over data as
// the API server's conversion does, defaults its type to Opaque, and
// validates it as the API server does (ValidateSecret in
// k8s.io/kubernetes/pkg/apis/core/validation, which this package cannot
// import). No error message carries a secret value.
func admitSecret(u map[string]any, prepare func(*metav1.ObjectMeta)) (Resource, field.ErrorList) {
	secret := &corev1.Secret{}
	var errs field.ErrorList
	meta, _, unknown, err := schemaobjectmeta.GetObjectMetaWithOptions(u, schemaobjectmeta.ObjectMetaOptions{ReturnUnknownFieldPaths: true})
	if err != nil {
		errs = append(errs, field.Invalid(field.NewPath("metadata"), field.OmitValueType{}, err.Error()))
	} else if meta != nil {
		secret.ObjectMeta = *meta
	}
	errs = append(errs, unknownFieldErrors(unknown)...)
	errs = append(errs, checkSecretFields(u)...)
	if len(errs) == 0 {
		rest := make(map[string]any, len(u))
		for k, v := range u {
			if k != "metadata" {
				rest[k] = v
			}
		}
		data, err := json.Marshal(rest)
		if err == nil {
			var strict []error
			strict, err = kjson.UnmarshalStrict(data, secret)
			for _, e := range strict {
				var fe kjson.FieldError
				if errors.As(e, &fe) {
					errs = append(errs, unknownFieldErrors([]string{fe.FieldPath()})...)
				}
			}
		}
		if err != nil {
			errs = append(errs, field.InternalError(nil, err))
		}
	}
	secret.APIVersion, secret.Kind = "v1", "Secret"
	prepare(&secret.ObjectMeta)
	if len(errs) > 0 {
		// Keep the identity only: a Secret that did not decode is not used.
		secret.Data, secret.StringData, secret.Type, secret.Immutable = nil, nil, "", nil
		return secret, errs
	}
	if len(secret.StringData) > 0 && secret.Data == nil {
		secret.Data = make(map[string][]byte, len(secret.StringData))
	}
	for k, v := range secret.StringData {
		secret.Data[k] = []byte(v)
	}
	secret.StringData = nil
	if secret.Type == "" {
		secret.Type = corev1.SecretTypeOpaque
	}
	return secret, validateSecret(secret)
}

// checkSecretFields checks the types of a Secret's fields before decoding,
// so that a bad value gets a field path, and base64 errors never show the
// value.
func checkSecretFields(u map[string]any) field.ErrorList {
	var errs field.ErrorList
	for _, name := range []string{"data", "stringData"} {
		path := field.NewPath(name)
		v, ok := u[name]
		if !ok || v == nil {
			continue
		}
		m, ok := v.(map[string]any)
		if !ok {
			errs = append(errs, field.TypeInvalid(path, field.OmitValueType{}, "must be an object of strings"))
			continue
		}
		for k, v := range m {
			s, ok := v.(string)
			if !ok && v != nil {
				errs = append(errs, field.TypeInvalid(path.Key(k), field.OmitValueType{}, "must be a string"))
				continue
			}
			if name == "data" {
				if _, err := base64.StdEncoding.DecodeString(s); err != nil {
					errs = append(errs, field.Invalid(path.Key(k), field.OmitValueType{}, "must be base64 (use stringData for plain text): "+err.Error()))
				}
			}
		}
	}
	if v, ok := u["type"]; ok && v != nil {
		if _, ok := v.(string); !ok {
			errs = append(errs, field.TypeInvalid(field.NewPath("type"), v, "must be a string"))
		}
	}
	if v, ok := u["immutable"]; ok && v != nil {
		if _, ok := v.(bool); !ok {
			errs = append(errs, field.TypeInvalid(field.NewPath("immutable"), v, "must be a boolean"))
		}
	}
	return errs
}

// validateSecret is ValidateSecret of k8s.io/kubernetes v1.37
// (pkg/apis/core/validation/validation.go) on the v1 type.
func validateSecret(secret *corev1.Secret) field.ErrorList {
	errs := apivalidation.ValidateObjectMeta(&secret.ObjectMeta, true, apivalidation.NameIsDNSSubdomain, field.NewPath("metadata"))

	dataPath := field.NewPath("data")
	totalSize := 0
	for key, value := range secret.Data {
		for _, msg := range validation.IsConfigMapKey(key) {
			errs = append(errs, field.Invalid(dataPath.Key(key), key, msg))
		}
		totalSize += len(value)
	}
	const maxSecretSize = 1 << 20 // core.MaxSecretSize
	if totalSize > maxSecretSize {
		errs = append(errs, field.TooLong(dataPath, "", maxSecretSize))
	}

	switch secret.Type {
	case corev1.SecretTypeServiceAccountToken:
		if secret.Annotations[corev1.ServiceAccountNameKey] == "" {
			errs = append(errs, field.Required(field.NewPath("metadata", "annotations").Key(corev1.ServiceAccountNameKey), ""))
		}
	case corev1.SecretTypeDockercfg, corev1.SecretTypeDockerConfigJson:
		key := corev1.DockerConfigKey
		if secret.Type == corev1.SecretTypeDockerConfigJson {
			key = corev1.DockerConfigJsonKey
		}
		data, ok := secret.Data[key]
		if !ok {
			errs = append(errs, field.Required(dataPath.Key(key), ""))
			break
		}
		if err := json.Unmarshal(data, &map[string]any{}); err != nil {
			errs = append(errs, field.Invalid(dataPath.Key(key), "<secret contents redacted>", err.Error()))
		}
	case corev1.SecretTypeBasicAuth:
		_, user := secret.Data[corev1.BasicAuthUsernameKey]
		_, password := secret.Data[corev1.BasicAuthPasswordKey]
		// Either may be empty, but one must be there.
		if !user && !password {
			errs = append(errs, field.Required(dataPath.Key(corev1.BasicAuthUsernameKey), ""))
			errs = append(errs, field.Required(dataPath.Key(corev1.BasicAuthPasswordKey), ""))
		}
	case corev1.SecretTypeSSHAuth:
		if len(secret.Data[corev1.SSHAuthPrivateKey]) == 0 {
			errs = append(errs, field.Required(dataPath.Key(corev1.SSHAuthPrivateKey), ""))
		}
	case corev1.SecretTypeTLS:
		if _, ok := secret.Data[corev1.TLSCertKey]; !ok {
			errs = append(errs, field.Required(dataPath.Key(corev1.TLSCertKey), ""))
		}
		if _, ok := secret.Data[corev1.TLSPrivateKeyKey]; !ok {
			errs = append(errs, field.Required(dataPath.Key(corev1.TLSPrivateKeyKey), ""))
		}
	}
	return errs
}
