// Package crd embeds the CustomResourceDefinitions in bases/, which
// `make manifests` (controller-gen) generates from api/v1alpha1. The YAML files
// stay the single source of truth: programs that must judge objects exactly as
// the API server does (postgate check, the standalone relay) read the schemas
// from here instead of keeping a copy.
package crd

import (
	"embed"
	"io/fs"
)

//go:embed bases/*.yaml
var bases embed.FS

// Bases returns the generated CRD files, one CustomResourceDefinition per
// file, at the root of the returned file system (postgate.io_<plural>.yaml).
func Bases() fs.FS {
	sub, err := fs.Sub(bases, "bases")
	if err != nil {
		// fs.Sub fails only for an invalid path, and "bases" is a constant.
		panic(err)
	}
	return sub
}
