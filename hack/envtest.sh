#!/usr/bin/env bash
# Builds the binaries envtest needs (kube-apiserver, kubectl, etcd) from Go
# modules into bin/, once. Nothing but Go modules can be fetched on the build
# machines, so the upstream release tarballs are not an option.
# A stamp file per binary records the version it was built from; a second run
# with the same versions builds nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/bin}
K8S_VERSION=v1.37.2
mkdir -p "$BIN"

# The version variables make the binaries report v1.37.2 instead of
# v0.0.0-master+$Format:%H$, which kubectl version and Helm cannot parse.
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=37"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

build() { # name dir package stamp
  local name=$1 dir=$2 pkg=$3 stamp=$4
  if [ -x "$BIN/$name" ] && [ "$(cat "$BIN/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  echo "envtest: building $name ($stamp), once; later runs reuse bin/$name" >&2
  (cd "$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$BIN/$name" "$pkg")
  echo "$stamp" > "$BIN/.$name.stamp"
}

stamp_k8s="$K8S_VERSION $(sha256sum hack/tools/k8s/go.sum | cut -c1-16)"
stamp_etcd="$(grep -oE 'etcd/server/v3 v[0-9.]+' hack/tools/etcd/go.mod | cut -d' ' -f2) $(sha256sum hack/tools/etcd/go.sum | cut -c1-16)"
build kube-apiserver hack/tools/k8s k8s.io/kubernetes/cmd/kube-apiserver "$stamp_k8s"
build kubectl hack/tools/k8s k8s.io/kubernetes/cmd/kubectl "$stamp_k8s"
build etcd hack/tools/etcd . "$stamp_etcd"
