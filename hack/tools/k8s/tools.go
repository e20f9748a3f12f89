//go:build tools

// Package tools pins the Kubernetes binaries that envtest needs. Nothing can be
// downloaded on the build machines but Go modules, so kube-apiserver and kubectl
// are built from k8s.io/kubernetes at the version the project tests against.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
