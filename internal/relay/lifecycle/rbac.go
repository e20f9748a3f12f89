package lifecycle

// A replica gets its StatefulSet to tell a scale-down from a restart. That
// get is on statefulsets in the relay namespace, not narrowed to the chart's
// name: the markers are generated once for every release name. Generated
// into config/rbac/relay by `make manifests`.
//
// +kubebuilder:rbac:groups=apps,namespace=postgate-system,resources=statefulsets,verbs=get
