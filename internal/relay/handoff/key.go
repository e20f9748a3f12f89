package handoff

import (
	"context"
	"crypto/rand"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// SecretName is the Secret in the relay namespace that holds the shared
// hand-off key, under SecretKey. The first relay that finds it missing
// creates it with KeyBytes random bytes; the others read it (a lost create
// race reads the winner's). Rotate it by deleting the Secret and restarting
// the relays.
const (
	SecretName = "postgate-relay-handoff" //nolint:gosec // a Secret's name, not its content
	SecretKey  = "key"
)

// EnsureKey returns the shared hand-off key, creating its Secret when
// missing. The key is never logged.
func EnsureKey(ctx context.Context, secrets corev1client.SecretInterface) ([]byte, error) {
	for range 3 {
		s, err := secrets.Get(ctx, SecretName, metav1.GetOptions{})
		if err == nil {
			key := s.Data[SecretKey]
			if len(key) < KeyBytes {
				return nil, fmt.Errorf("secret %s: key %q shorter than %d bytes", SecretName, SecretKey, KeyBytes)
			}
			return key, nil
		}
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("read secret %s: %w", SecretName, err)
		}
		key := make([]byte, KeyBytes)
		_, _ = rand.Read(key) // crypto/rand.Read never fails (Go 1.24+)
		_, err = secrets.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: SecretName, Labels: map[string]string{"app.kubernetes.io/name": "postgate", "app.kubernetes.io/component": "relay"}},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{SecretKey: key},
			Immutable:  new(true),
		}, metav1.CreateOptions{})
		switch {
		case err == nil:
			return key, nil
		case !apierrors.IsAlreadyExists(err):
			return nil, fmt.Errorf("create secret %s: %w", SecretName, err)
		}
	}
	return nil, fmt.Errorf("secret %s: created and deleted concurrently", SecretName)
}
