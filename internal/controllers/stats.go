package controllers

import (
	"maps"
	"sync"
	"sync/atomic"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Stats counts what the reconciler did, for tests and benchmarks.
type Stats struct {
	Reconciles    atomic.Int64
	Compiles      atomic.Int64
	Publications  atomic.Int64
	StatusWrites  atomic.Int64
	ShardsDeleted atomic.Int64
	Version       atomic.Int64
	// PublishedAt is when the last index was written (Unix nanoseconds);
	// CompileNanos and StatusNanos how long the last compile (with the
	// Secret reads and the encoding) and the last status pass took.
	PublishedAt  atomic.Int64
	CompileNanos atomic.Int64
	StatusNanos  atomic.Int64
	// TableBytes and TableShards are the size of the table in force (its
	// gzipped shards) and their count; TableObjects its objects.
	TableBytes, TableShards, TableObjects atomic.Int64

	// conditions counts the objects by kind and condition as the last
	// status pass computed them.
	mu         sync.Mutex
	conditions map[conditionKey]int
}

// conditionKey is one series of MetricObjects.
type conditionKey struct {
	kind, condition string
	status          metav1.ConditionStatus
}

// Conditions returns a copy of the counts by kind, condition type and
// status from the last status pass.
func (s *Stats) Conditions() map[conditionKey]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.conditions)
}

func (s *Stats) setConditions(c map[conditionKey]int) {
	s.mu.Lock()
	s.conditions = c
	s.mu.Unlock()
}
