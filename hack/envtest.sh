#!/usr/bin/env bash
# Builds kube-apiserver, etcd and kubectl for envtest from Go modules (no download site is
# reachable from CI) into a versioned cache directory outside the checkout, once. The last line
# printed is that directory: use it as KUBEBUILDER_ASSETS.
set -euo pipefail

K8S_VERSION=1.37.2
ETCD_VERSION=3.7.0
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${TALLY_ENVTEST_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tally/envtest}/k8s-${K8S_VERSION}"
mkdir -p "$cache"

# Stable flags keep the Go build cache warm between runs; the version stamp keeps kubectl and
# discovery clients from printing skew warnings about "v0.0.0-master".
minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X ${pkg}.gitVersion=v${K8S_VERSION} -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean"
done

build() { # name
	local name="$1" stamp="$cache/.$1.built"
	if [[ -x "$cache/$name" && -f "$stamp" && "$(cat "$stamp")" == "$K8S_VERSION/$ETCD_VERSION" ]]; then
		return
	fi
	echo "building $name (first time takes minutes; later runs reuse the Go build cache)" >&2
	(cd "$here/envtest-bins" && go build -mod=readonly -ldflags "$ldflags" -o "$cache/$name.tmp" "./cmd/$name")
	mv "$cache/$name.tmp" "$cache/$name"
	echo "$K8S_VERSION/$ETCD_VERSION" >"$stamp"
}

build etcd
build kubectl
build kube-apiserver
echo "$cache"
