#!/usr/bin/env bash
# Build the real Pulumi engine and a Kubernetes control plane from their Go modules, once per machine,
# into a cache outside the repository (reused by later runs until a go.mod/go.sum or this script changes):
#
#   pulumi/    the Pulumi CLI (github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
#   provider/  pulumi-resource-kubernetes (github.com/pulumi/pulumi-kubernetes/provider/v4)
#   kube/      kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes), etcd
#              (go.etcd.io/etcd/server/v3) and kwok (sigs.k8s.io/kwok), plus kwok's default stages
#
# Everything comes through the Go module proxy (GOFLAGS=-mod=readonly: go.sum is the pin); nothing is
# downloaded at run time. Usage: tools/engine/build.sh [pulumi|provider|kube ...] (default: all).
# Environment: TFF_ENGINE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/tff-k8s/engine),
# ENGINE_NICE (default 19: the machine is shared), ENGINE_FORCE=1 (rebuild even when up to date).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${TFF_ENGINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tff-k8s/engine}
NICE=(nice -n "${ENGINE_NICE:-19}")
BIN=$CACHE/bin
mkdir -p "$BIN" "$CACHE/stamps" "$CACHE/share"

export CGO_ENABLED=0 GOFLAGS=-mod=readonly GOTOOLCHAIN=local
export GOCACHE=${GOCACHE:-$(go env GOCACHE)} GOMODCACHE=${GOMODCACHE:-$(go env GOMODCACHE)}

# Versions (each must match its tools module's go.mod; the stamps below hash the go.mod too).
PULUMI_VERSION=v3.223.0            # uv.lock: pulumi 3.223.0
PROVIDER_VERSION=4.25.0            # the only pulumi-kubernetes provider the module proxy serves (see provider/go.mod)
KUBE_VERSION=v1.36.3
KUBE_BUILD_DATE=2026-07-22T18:07:38Z  # the module's release time, so the binaries are reproducible

log() { printf '[engine] %s\n' "$*" >&2; }

# A group is up to date when its stamp matches the hash of its go.mod, go.sum, this script, the
# committed files it installs and the Go version.
stamp_key() {
  local group=$1
  { cat "$HERE/$group/go.mod" "$HERE/$group/go.sum" "$HERE/build.sh" "$HERE/pulumi-analyzer-policy-python"
    go version; } | sha256sum | cut -c1-16
}

up_to_date() {
  local group=$1; shift
  [[ ${ENGINE_FORCE:-0} != 1 ]] || return 1
  [[ -f $CACHE/stamps/$group && $(cat "$CACHE/stamps/$group") == "$(stamp_key "$group")" ]] || return 1
  local b
  for b in "$@"; do [[ -x $BIN/$b ]] || return 1; done
}

# go build into a temporary name, then rename: an interrupted build never leaves a half-written binary.
gobuild() {
  local out=$1; shift
  "${NICE[@]}" go build -trimpath -o "$BIN/.$out.tmp" "$@"
  mv -f "$BIN/.$out.tmp" "$BIN/$out"
}

timed() {
  local group=$1; shift
  local start=$SECONDS
  "$@"
  local took=$((SECONDS - start))
  log "$group built in ${took}s"
  printf '%s\t%s\t%ss\t%s\n' "$(date -u +%FT%TZ)" "$group" "$took" "$(nproc) cores" >>"$CACHE/build-times.tsv"
}

build_pulumi() {
  cd "$HERE/pulumi"
  log "pulumi $PULUMI_VERSION: downloading modules"
  "${NICE[@]}" go mod download
  log "pulumi $PULUMI_VERSION: building the CLI"
  # As the release does (.goreleaser.yml): -trimpath, osusergo, the version stamped in.
  gobuild pulumi -tags osusergo \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
  # The CLI starts this for `--policy-pack <dir>` of a Python pack when no Python language host is
  # installed (see the script's header).
  install -m 0755 "$HERE/pulumi-analyzer-policy-python" "$BIN/pulumi-analyzer-policy-python"
}

build_provider() {
  cd "$HERE/provider"
  log "pulumi-resource-kubernetes $PROVIDER_VERSION: downloading modules"
  "${NICE[@]}" go mod download
  local mod gen src
  mod=$(go list -m -f '{{.Dir}}' github.com/pulumi/pulumi-kubernetes/provider/v4)
  gen=$CACHE/gen/provider-$PROVIDER_VERSION
  src=$gen/provider
  rm -rf "$gen" && mkdir -p "$gen"
  # The provider embeds schema-embed.json and terraform-mapping-embed.json, which its
  # cmd/pulumi-resource-kubernetes/generate.go (`go generate`, VERSION=<version>) writes next to
  # itself from the committed schema.json and terraform-mapping.json. The module cache is read-only
  # (and -overlay may not touch it), so: copy the module as downloaded (its hash checked against
  # go.sum), run that same generator in the copy, and build the copy in place of the module
  # (a directory replace in a scratch copy of this tools module's go.mod, -modfile).
  cp -r "$mod" "$src" && chmod -R u+w "$src"
  log "pulumi-resource-kubernetes $PROVIDER_VERSION: generating schema-embed.json"
  "${NICE[@]}" go build -trimpath -o "$gen/generate" "$src/cmd/pulumi-resource-kubernetes/generate.go"
  (cd "$src/cmd/pulumi-resource-kubernetes" && VERSION=$PROVIDER_VERSION "$gen/generate")
  cp go.mod "$gen/go.mod" && cp go.sum "$gen/go.sum"
  go mod edit -modfile="$gen/go.mod" -replace "github.com/pulumi/pulumi-kubernetes/provider/v4=$src"
  log "pulumi-resource-kubernetes $PROVIDER_VERSION: building"
  gobuild pulumi-resource-kubernetes -modfile="$gen/go.mod" \
    -ldflags "-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$PROVIDER_VERSION" \
    github.com/pulumi/pulumi-kubernetes/provider/v4/cmd/pulumi-resource-kubernetes
}

build_kube() {
  cd "$HERE/kube"
  log "kubernetes $KUBE_VERSION, etcd, kwok: downloading modules"
  "${NICE[@]}" go mod download
  # The version Kubernetes' own build stamps in (hack/lib/version.sh); components and clients read it.
  local v=k8s.io/component-base/version
  local kube_ldflags="-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=36 -X $v.gitTreeState=clean -X $v.buildDate=$KUBE_BUILD_DATE"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    log "building $c $KUBE_VERSION"
    gobuild "$c" -ldflags "$kube_ldflags" "k8s.io/kubernetes/cmd/$c"
  done
  log "building etcd"
  gobuild etcd -ldflags "-s -w" go.etcd.io/etcd/server/v3
  log "building kwok"
  gobuild kwok -ldflags "-s -w" sigs.k8s.io/kwok/cmd/kwok
  # kwok plays kubelets from "stages"; kwokctl hands it the defaults embedded in its module
  # (kustomize/stage): node initialise + heartbeat with a lease, pod ready / complete / delete.
  local kwok stages=$CACHE/share/kwok-stages
  kwok=$(go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
  rm -rf "$stages" && mkdir -p "$stages"
  install -m 0644 "$kwok/kustomize/stage/node/fast/node-initialize.yaml" \
    "$kwok/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
    "$kwok/kustomize/stage/pod/fast/pod-ready.yaml" \
    "$kwok/kustomize/stage/pod/fast/pod-complete.yaml" \
    "$kwok/kustomize/stage/pod/fast/pod-delete.yaml" "$stages/"
}

declare -A BINARIES=(
  [pulumi]="pulumi pulumi-analyzer-policy-python"
  [provider]="pulumi-resource-kubernetes"
  [kube]="kube-apiserver kube-controller-manager kube-scheduler etcd kwok"
)
groups=("$@")
[[ ${#groups[@]} -gt 0 ]] || groups=(pulumi provider kube)
for group in "${groups[@]}"; do
  [[ -n ${BINARIES[$group]:-} ]] || { log "unknown group '$group' (pulumi, provider, kube)"; exit 2; }
  # shellcheck disable=SC2086
  if up_to_date "$group" ${BINARIES[$group]}; then
    log "$group: up to date in $BIN"
    continue
  fi
  rm -f "$CACHE/stamps/$group"
  timed "$group" "build_$group"
  stamp_key "$group" >"$CACHE/stamps/$group"
done

# What the tests report: every tool's version, as built.
cat >"$CACHE/versions.env" <<EOF
PULUMI_VERSION=$PULUMI_VERSION
PROVIDER_VERSION=$PROVIDER_VERSION
KUBE_VERSION=$KUBE_VERSION
ETCD_VERSION=$(cd "$HERE/kube" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
KWOK_VERSION=$(cd "$HERE/kube" && go list -m -f '{{.Version}}' sigs.k8s.io/kwok)
EOF
log "tools in $BIN"
