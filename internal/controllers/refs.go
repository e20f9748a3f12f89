package controllers

import (
	"context"
	"fmt"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/postgate/postgate/internal/routing"
)

// referencedSecrets is the set of the Secrets the last compile looked up
// (routing.Verdict.SecretRefs): a Secret event requeues the table only for
// one of these, or while a compile runs, which may read it or not.
type referencedSecrets struct {
	compiling atomic.Bool
	set       atomic.Pointer[map[types.NamespacedName]struct{}]
}

// has reports whether a Secret event may change the table. Before the
// first compile, every Secret may.
func (s *referencedSecrets) has(key types.NamespacedName) bool {
	if s.compiling.Load() {
		return true
	}
	set := s.set.Load()
	if set == nil {
		return true
	}
	_, ok := (*set)[key]
	return ok
}

// record keeps the Secrets res looked up.
func (s *referencedSecrets) record(res *routing.Result) {
	set := map[types.NamespacedName]struct{}{}
	for _, v := range res.Verdicts {
		for _, name := range v.SecretRefs {
			set[types.NamespacedName{Namespace: v.Object.Namespace, Name: name}] = struct{}{}
		}
	}
	s.set.Store(&set)
}

func secretMeta() *metav1.PartialObjectMetadata {
	m := &metav1.PartialObjectMetadata{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("Secret"))
	return m
}

func secretMetaList() *metav1.PartialObjectMetadataList {
	m := &metav1.PartialObjectMetadataList{}
	m.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("SecretList"))
	return m
}

// secretStore holds the data of the referenced Secrets, and of no others.
// The manager caches only the metadata of Secrets (a metadata-only watch:
// names, labels and resourceVersions, no data); a Secret's data is read
// directly from the API server when it is first referenced or when its
// resourceVersion moves, and dropped when no object references it any more.
type secretStore struct {
	cache  client.Reader // the manager's cache: metadata only for Secrets
	direct client.Reader // the API server
	byName map[types.NamespacedName]*corev1.Secret
	// bulkThreshold: with more Secrets to read than this (a cold start),
	// one paginated list replaces a GET each.
	bulkThreshold int
	// reads counts the Secrets read from the API server, for tests.
	reads int
}

func newSecretStore(cache, direct client.Reader) *secretStore {
	return &secretStore{cache: cache, direct: direct, byName: map[types.NamespacedName]*corev1.Secret{}, bulkThreshold: 200}
}

// refresh brings the store to the referenced Secrets' current data and
// returns them.
func (s *secretStore) refresh(ctx context.Context, refs map[types.NamespacedName]struct{}) ([]corev1.Secret, error) {
	for key := range s.byName {
		if _, ok := refs[key]; !ok {
			delete(s.byName, key)
		}
	}
	var stale []types.NamespacedName
	for key := range refs {
		meta := secretMeta()
		err := s.cache.Get(ctx, key, meta)
		switch {
		case apierrors.IsNotFound(err):
			if _, held := s.byName[key]; held {
				// Deleted, or created by us a moment ago and not yet in
				// the cache: ask the API server.
				stale = append(stale, key)
			}
		case err != nil:
			return nil, err
		default:
			if held := s.byName[key]; held == nil || held.ResourceVersion != meta.ResourceVersion {
				stale = append(stale, key)
			}
		}
	}
	if len(stale) > s.bulkThreshold {
		for _, key := range stale {
			delete(s.byName, key)
		}
		if err := s.list(ctx, refs); err != nil {
			return nil, err
		}
	} else {
		for _, key := range stale {
			if err := s.get(ctx, key); err != nil {
				return nil, err
			}
		}
	}
	out := make([]corev1.Secret, 0, len(s.byName))
	for _, sec := range s.byName {
		out = append(out, *sec)
	}
	return out, nil
}

func (s *secretStore) get(ctx context.Context, key types.NamespacedName) error {
	sec := &corev1.Secret{}
	s.reads++
	err := s.direct.Get(ctx, key, sec)
	if apierrors.IsNotFound(err) {
		delete(s.byName, key)
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading Secret %s: %w", key, err)
	}
	s.put(sec)
	return nil
}

// list reads every Secret page by page and keeps the referenced ones.
func (s *secretStore) list(ctx context.Context, refs map[types.NamespacedName]struct{}) error {
	opts := &client.ListOptions{Limit: 500}
	for {
		var page corev1.SecretList
		if err := s.direct.List(ctx, &page, opts); err != nil {
			return fmt.Errorf("listing Secrets: %w", err)
		}
		for i := range page.Items {
			sec := &page.Items[i]
			s.reads++
			if _, ok := refs[client.ObjectKeyFromObject(sec)]; ok {
				s.put(sec)
			}
		}
		if page.Continue == "" {
			return nil
		}
		opts.Continue = page.Continue
	}
}

// put keeps what the compiler reads of a Secret.
func (s *secretStore) put(sec *corev1.Secret) {
	s.byName[client.ObjectKeyFromObject(sec)] = &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: sec.Namespace, Name: sec.Name, UID: sec.UID, ResourceVersion: sec.ResourceVersion,
		},
		Type: sec.Type, Data: sec.Data,
	}
}
