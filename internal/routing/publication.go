package routing

// How a table is published in the relay namespace (docs/design.md contracts 1 and
// 2). The operator writes these objects and the relays read them; both ends
// use these names, so they change together or not at all.
const (
	// TableLabel marks every Secret of a published table. Its value is
	// TableLabelShard or TableLabelIndex.
	TableLabel = "postgate.io/routing-table"
	// TableLabelShard is the TableLabel value of a shard Secret.
	TableLabelShard = "shard"
	// TableLabelIndex is the TableLabel value of the index Secret.
	TableLabelIndex = "index"

	// IndexSecretName is the index Secret, written after its shards.
	IndexSecretName = "postgate-table"
	// IndexDataKey holds the JSON Index in the index Secret.
	IndexDataKey = "index.json"
	// ShardDataKey holds a shard's gzipped JSON in a shard Secret, which is
	// immutable and named by its content hash (Shard.Name).
	ShardDataKey = "shard.json.gz"
	// ShapingDataKey holds, in the index Secret beside the index, the
	// traffic shaping policy as canonical JSON (shaping.Policy.Canonical),
	// when the platform team set one; Index.Shaping is its hash. Absent:
	// relays use the shipped default policy.
	ShapingDataKey = "shaping.json"

	// RelayLeasePrefix starts the name of each relay replica's Lease:
	// postgate-relay-<pod name>.
	RelayLeasePrefix = "postgate-relay-"
	// TableVersionAnnotation on a relay's Lease is the version of the table
	// the replica has loaded.
	TableVersionAnnotation = "postgate.io/table-version"
	// RelayLeaseDurationSeconds and RelayLeaseRenewSeconds: a relay renews
	// its Lease every 10 s for 30 s; it is live while the Lease is unexpired.
	RelayLeaseDurationSeconds = 30
	RelayLeaseRenewSeconds    = 10
)
