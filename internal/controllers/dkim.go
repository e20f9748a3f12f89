package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1alpha1 "github.com/postgate/postgate/api/v1alpha1"
	"github.com/postgate/postgate/internal/relay/dkim"
	"github.com/postgate/postgate/internal/routing"
)

// A generated DKIM key lives in a Secret of the SenderDomain's namespace with
// no owner reference: deleting and re-creating the SenderDomain (a GitOps
// re-sync) finds the same key, so the published DNS record stays valid. The
// operator creates it once and never overwrites it; retiring it is the
// user's step (README: "Retiring a generated DKIM key").
const (
	// DKIMKeyLabel marks a Secret that holds a key the operator generated.
	DKIMKeyLabel = "postgate.io/dkim-key"
	// DKIMDomainAnnotation and DKIMSelectorAnnotation say what the key is
	// for; DKIMAlgorithmAnnotation how it was made.
	DKIMDomainAnnotation    = "postgate.io/dkim-domain"
	DKIMSelectorAnnotation  = "postgate.io/dkim-selector"
	DKIMAlgorithmAnnotation = "postgate.io/dkim-algorithm"
)

// generatedKeySecret returns the Secret to create for sd's generated key.
func generatedKeySecret(sd *v1alpha1.SenderDomain) (*corev1.Secret, error) {
	name, key := routing.DKIMKeySecret(sd)
	alg := sd.Spec.Signing.Algorithm
	if alg == "" {
		alg = v1alpha1.DKIMAlgorithmRSA2048
	}
	pemKey, err := dkim.GenerateKeyPEM(alg)
	if err != nil {
		return nil, fmt.Errorf("generating a %s key: %w", alg, err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: sd.Namespace, Name: name,
			Labels: map[string]string{DKIMKeyLabel: "true"},
			Annotations: map[string]string{
				DKIMDomainAnnotation:    string(sd.Spec.Domain),
				DKIMSelectorAnnotation:  string(sd.Spec.Signing.Selector),
				DKIMAlgorithmAnnotation: string(alg),
			},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{key: pemKey},
	}, nil
}

// createKeySecret creates sec unless a Secret of that name exists, which is
// never overwritten. It returns the Secret now in the API server.
func createKeySecret(ctx context.Context, c client.Client, direct client.Reader, sec *corev1.Secret) (created bool, err error) {
	err = c.Create(ctx, sec)
	if apierrors.IsAlreadyExists(err) {
		return false, direct.Get(ctx, client.ObjectKeyFromObject(sec), sec)
	}
	return err == nil, err
}
