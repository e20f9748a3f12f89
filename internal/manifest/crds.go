package manifest

import (
	"embed"
	"io/fs"
)

// crds holds the CustomResourceDefinitions that `make manifests`
// (controller-gen) generates from api/v1alpha1 into config/crd/bases and
// copies here, so that this package judges objects exactly as the API server
// does without making the CRDs a public Go package (go:embed cannot reach
// config/ from internal/). `make verify` fails when the copy drifts.
//
//go:embed crds/*.yaml
var crds embed.FS

// embeddedCRDs returns the CRD files, one CustomResourceDefinition per file
// (postgate.io_<plural>.yaml), at the root of the returned file system.
func embeddedCRDs() fs.FS {
	sub, err := fs.Sub(crds, "crds")
	if err != nil {
		// fs.Sub fails only for an invalid path, and "crds" is a constant.
		panic(err)
	}
	return sub
}
