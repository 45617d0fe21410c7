#!/usr/bin/env bash
# Builds the tff-k8s image (services/Dockerfile) with podman, with no registry: the Dockerfile's
# base images are replaced by stand-ins built here (a build arg each), and only Debian's packages
# and PyPI are reached.
#   python base: a Debian bookworm root filesystem (debootstrap --variant=minbase) with python3 (3.11),
#                python3-venv and this machine's CA bundle, imported as an image;
#   uv base:     an image holding only the uv binary, from the uv wheel on PyPI, at the Dockerfile's version.
# The stand-ins are built once per machine (kept in podman's image store); the image is rebuilt
# from the working tree each time (podman's layer cache makes an unchanged tree cheap).
# Usage: images.sh [IMAGE]   (default localhost/tff-k8s:e2e); prints the image ID last.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
IMAGE=${1:-localhost/tff-k8s:e2e}
DOCKERFILE="$ROOT/services/Dockerfile"
SUITE=bookworm
PYTHON_BASE=localhost/tff-k8s-standin/python:3.11-$SUITE
UV_VERSION=$(sed -n 's/^ARG UV_IMAGE=.*:\([0-9.]*\)$/\1/p' "$DOCKERFILE")
UV_BASE=localhost/tff-k8s-standin/uv:$UV_VERSION
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have() { podman image exists "$1"; }

if ! have "$PYTHON_BASE"; then
    echo "images.sh: building $PYTHON_BASE with debootstrap (once per machine)"
    rootfs="$work/rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" \
        http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 \
        || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"  # this machine's CA bundle
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | podman import --change "ENV PATH=$PATH_ENV" --change 'CMD ["/usr/bin/python3"]' \
        - "$PYTHON_BASE" >/dev/null
fi

if ! have "$UV_BASE"; then
    echo "images.sh: building $UV_BASE from the uv $UV_VERSION wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_17_x86_64 \
        --python-version 3.11 -d "$work/wheel" "uv==$UV_VERSION"
    mkdir -p "$work/uv"
    python3 - "$work/wheel" "$work/uv" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("uv-*.whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.endswith(".data/scripts/uv") or name.endswith(".data/scripts/uvx"):
            target = pathlib.Path(sys.argv[2]) / pathlib.Path(name).name
            target.write_bytes(z.read(name))
            target.chmod(0o755)
PY
    [ -x "$work/uv/uv" ] || { echo "images.sh: no uv binary in the uv wheel" >&2; exit 1; }
    tar -C "$work/uv" -c uv uvx | podman import - "$UV_BASE" >/dev/null
fi

echo "images.sh: building $IMAGE from $DOCKERFILE"
started=$(date +%s)
podman build --network host --layers -f "$DOCKERFILE" \
    --build-arg PYTHON_IMAGE="$PYTHON_BASE" --build-arg UV_IMAGE="$UV_BASE" \
    -t "$IMAGE" "$ROOT" >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
# The image must run the services of this tree, byte for byte (a stale cached build would not).
digest='import hashlib, pathlib, sys; r = pathlib.Path(sys.argv[1]); h = hashlib.sha256()
for p in sorted(r.rglob("*.py")): h.update(str(p.relative_to(r)).encode() + p.read_bytes())
print(h.hexdigest())'
here=$(python3 -c "$digest" "$ROOT/services")
inside=$(podman run --rm --entrypoint /opt/venv/bin/python "$IMAGE" -c "$digest" \
    /opt/venv/lib/python3.11/site-packages/services)
[ "$here" = "$inside" ] || { echo "images.sh: $IMAGE holds other services code than $ROOT/services" >&2; exit 1; }
echo "images.sh: built $IMAGE in $(( $(date +%s) - started )) s, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
podman image inspect --format '{{.Id}}' "$IMAGE"
