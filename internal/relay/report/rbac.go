package report

// Cluster-wide, a replica patches the status subresource of the three kinds
// (its own status.delivery.replicas entry, with server-side apply) and
// records Events. Generated into config/rbac/relay by `make manifests`.
//
// +kubebuilder:rbac:groups=postgate.io,resources=senderdomains/status;relayroutes/status;trustednetworks/status,verbs=patch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
