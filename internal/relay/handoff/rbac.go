package handoff

// The hand-off key: the first relay that finds the Secret
// postgate-relay-handoff missing creates it (create cannot be narrowed to a
// name; the relay never updates or deletes a Secret, and a Secret it could
// create does not pass as a table shard, whose hashes the index names).
// Generated into config/rbac/relay by `make manifests`.
//
// +kubebuilder:rbac:groups="",namespace=postgate-system,resources=secrets,verbs=get;create
