package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/postgate/postgate/internal/relay/shaping"
	"github.com/postgate/postgate/internal/routing"
)

// historyDataKey holds, in the index Secret beside the index, the shard names
// of each version that a live relay may still use. It is the bookkeeping
// that shard deletion needs, kept where it is written atomically with the
// index and read back by a restarted operator. Relays ignore it.
const historyDataKey = "history.json"

type history struct {
	Versions []versionShards `json:"versions"`
}

type versionShards struct {
	Version int64    `json:"version"`
	Shards  []string `json:"shards"`
}

// publisher writes the table into the relay namespace (docs/design.md contract
// 1): the shards first, immutable and named by their hash, then the index.
// Only the reconcile goroutine uses it.
type publisher struct {
	client    client.Client // writes
	cache     client.Reader // the metadata of Secrets, to find unused shards
	direct    client.Reader // the API server, for the index and shard data
	namespace string

	// index is the last published index; nil before the first.
	index *routing.Index
	// shaping is the shaping policy published with index (canonical
	// JSON), nil for none.
	shaping []byte
	// shards holds the shard names of the current version and of versions
	// live relays report.
	shards map[int64][]string

	// bytes is the size of the index's shards (gzipped), for metrics.
	bytes int64

	// afterShards, when set, runs between the shard writes and the index
	// write: tests make it fail to stand for an operator that dies there.
	afterShards func() error
}

func newPublisher(c client.Client, cache, direct client.Reader, namespace string) *publisher {
	return &publisher{client: c, cache: cache, direct: direct, namespace: namespace, shards: map[int64][]string{}}
}

func (p *publisher) indexKey() types.NamespacedName {
	return types.NamespacedName{Namespace: p.namespace, Name: routing.IndexSecretName}
}

// start reads back what an earlier operator published: the version to
// continue from, the shard history, and the published table itself (nil
// when there is none or it cannot be decoded, which makes the next publish
// write a new version).
func (p *publisher) start(ctx context.Context, cache *routing.Cache) (*routing.Table, error) {
	sec := &corev1.Secret{}
	if err := p.direct.Get(ctx, p.indexKey(), sec); apierrors.IsNotFound(err) {
		return nil, nil
	} else if err != nil {
		return nil, fmt.Errorf("reading the index Secret: %w", err)
	}
	idx := &routing.Index{}
	if err := json.Unmarshal(sec.Data[routing.IndexDataKey], idx); err != nil {
		// Unreadable: start over, keeping no history; orphaned shards are
		// deleted as unused.
		return nil, nil //nolint:nilerr // a broken index is replaced, not an error
	}
	var h history
	_ = json.Unmarshal(sec.Data[historyDataKey], &h) // optional bookkeeping
	for _, v := range h.Versions {
		p.shards[v.Version] = v.Shards
	}
	p.shards[idx.Version] = shardNames(idx)
	p.index = idx
	p.shaping = publishedShaping(idx, sec.Data[routing.ShapingDataKey])
	data := make(map[string][]byte, len(idx.Shards))
	for _, ref := range idx.Shards {
		s := &corev1.Secret{}
		if err := p.direct.Get(ctx, types.NamespacedName{Namespace: p.namespace, Name: ref.Name}, s); err != nil {
			if apierrors.IsNotFound(err) {
				break // Decode reports it
			}
			return nil, fmt.Errorf("reading shard %s: %w", ref.Name, err)
		}
		data[ref.Name] = s.Data[routing.ShardDataKey]
	}
	t, err := routing.Decode(idx, data, cache)
	if err == nil {
		p.bytes = 0
		for _, d := range data {
			p.bytes += int64(len(d))
		}
	}
	if err != nil {
		// Republish whatever compiles, writing every shard again.
		p.index = &routing.Index{Version: idx.Version}
		p.shards = map[int64][]string{}
		return nil, nil //nolint:nilerr // a broken table is replaced, not an error
	}
	return t, nil
}

// publishedShaping returns the shaping policy an earlier operator published
// with idx, when it is intact and valid: the last good policy, kept should
// the ConfigMap's now not parse. Otherwise nil: the next publication
// replaces it (its hash differs from whatever is published then).
func publishedShaping(idx *routing.Index, data []byte) []byte {
	if len(data) == 0 || idx.VerifyShaping(data) != nil {
		return nil
	}
	if _, err := shaping.Parse(data); err != nil {
		return nil
	}
	return data
}

// shapingHash is the hash of the published shaping policy, "" for none.
func (p *publisher) shapingHash() string {
	if p.index == nil {
		return ""
	}
	return p.index.Shaping
}

// version is the version of the index in force, 0 before the first.
func (p *publisher) version() int64 {
	if p.index == nil {
		return 0
	}
	return p.index.Version
}

func shardNames(idx *routing.Index) []string {
	names := make([]string, len(idx.Shards))
	for i, s := range idx.Shards {
		names[i] = s.Name
	}
	return names
}

// publish writes t with the shaping policy shapingJSON (canonical JSON, nil
// for none) as a new version unless the published table and policy have the
// same hashes: a changed policy alone is a new version, which every relay
// acknowledges on its Lease once it applies it. minVersion is the lowest version it may take: above every version a
// live relay reports, so that versions keep growing even if the index was
// lost. It returns the index now published and whether it is new.
func (p *publisher) publish(ctx context.Context, t *routing.Table, shapingJSON []byte, minVersion int64) (*routing.Index, bool, error) {
	version, prev := int64(1), 0
	if p.index != nil {
		version, prev = p.index.Version+1, len(p.index.Shards)
	}
	idx, shards, err := routing.Encode(t, max(version, minVersion), prev)
	if err != nil {
		return nil, false, fmt.Errorf("encoding the table: %w", err)
	}
	idx.SetShaping(shapingJSON)
	if idx.SameContent(p.index) {
		return p.index, false, nil
	}
	// A shard of a kept version is there: this publisher deletes no such
	// shard. Any other is created, even if the cache shows it: it may be
	// one collect deleted a moment ago, which an unchanged content (a
	// password rotated and back) brings back.
	kept := map[string]bool{}
	for _, names := range p.shards {
		for _, n := range names {
			kept[n] = true
		}
	}
	for _, s := range shards {
		if kept[s.Name] {
			continue
		}
		if err := p.writeShard(ctx, s); err != nil {
			return nil, false, err
		}
	}
	if p.afterShards != nil {
		if err := p.afterShards(); err != nil {
			return nil, false, err
		}
	}
	p.shards[idx.Version] = shardNames(idx)
	if err := p.writeIndex(ctx, idx, shapingJSON); err != nil {
		delete(p.shards, idx.Version)
		return nil, false, err
	}
	p.index, p.shaping = idx, shapingJSON
	p.bytes = 0
	for _, s := range shards {
		p.bytes += int64(len(s.Data))
	}
	return idx, true, nil
}

func (p *publisher) writeShard(ctx context.Context, s routing.Shard) error {
	immutable := true
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: p.namespace, Name: s.Name,
			Labels: map[string]string{routing.TableLabel: routing.TableLabelShard},
		},
		Immutable: &immutable,
		Type:      corev1.SecretTypeOpaque,
		Data:      map[string][]byte{routing.ShardDataKey: s.Data},
	}
	// Named by its content hash: one that exists holds this content.
	if err := p.client.Create(ctx, sec); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("writing shard %s: %w", s.Name, err)
	}
	return nil
}

func (p *publisher) writeIndex(ctx context.Context, idx *routing.Index, shapingJSON []byte) error {
	indexJSON, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	var h history
	for _, v := range slices.Sorted(maps.Keys(p.shards)) {
		h.Versions = append(h.Versions, versionShards{Version: v, Shards: p.shards[v]})
	}
	historyJSON, err := json.Marshal(h)
	if err != nil {
		return err
	}
	data := map[string][]byte{routing.IndexDataKey: indexJSON, historyDataKey: historyJSON}
	if len(shapingJSON) > 0 {
		data[routing.ShapingDataKey] = shapingJSON
	}
	sec := &corev1.Secret{}
	err = p.direct.Get(ctx, p.indexKey(), sec)
	switch {
	case apierrors.IsNotFound(err):
		sec = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: p.namespace, Name: routing.IndexSecretName,
				Labels: map[string]string{routing.TableLabel: routing.TableLabelIndex},
			},
			Type: corev1.SecretTypeOpaque,
			Data: data,
		}
		err = p.client.Create(ctx, sec)
	case err == nil:
		if sec.Labels == nil {
			sec.Labels = map[string]string{}
		}
		sec.Labels[routing.TableLabel] = routing.TableLabelIndex
		sec.Data = data
		err = p.client.Update(ctx, sec)
	}
	if err != nil {
		return fmt.Errorf("writing the index Secret (version %d): %w", idx.Version, err)
	}
	return nil
}

// collect deletes the shards that neither the current version nor a version
// a live relay reports needs, and forgets those versions.
func (p *publisher) collect(ctx context.Context, liveVersions []int64) (deleted int, err error) {
	if p.index == nil {
		return 0, nil
	}
	keep := map[string]bool{}
	for v, names := range p.shards {
		if v != p.index.Version && !slices.Contains(liveVersions, v) {
			delete(p.shards, v)
			continue
		}
		for _, n := range names {
			keep[n] = true
		}
	}
	list := secretMetaList()
	if err := p.cache.List(ctx, list, client.InNamespace(p.namespace), client.MatchingLabels{routing.TableLabel: routing.TableLabelShard}); err != nil {
		return 0, err
	}
	for i := range list.Items {
		m := &list.Items[i]
		if keep[m.Name] {
			continue
		}
		if err := p.client.Delete(ctx, m, client.Preconditions{UID: &m.UID}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return deleted, fmt.Errorf("deleting shard %s: %w", m.Name, err)
		}
		deleted++
	}
	return deleted, nil
}
