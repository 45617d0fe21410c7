#!/usr/bin/env bash
# Installs what the container tests need when it is missing: podman (with catatonit, its pause
# binary), runc, debootstrap and iptables, from Debian's packages; then configures podman for this kind of
# machine (containers.conf), each setting for a failure seen here:
#   runtime = "runc": the machine mounts cgroup v1 controllers beside an empty cgroup2 tree
#     ("hybrid"), which Debian's crun 1.8 refuses ("cgroups in hybrid mode not supported");
#   default_ulimits: podman's defaults cannot be set here ("setrlimit RLIMIT_NPROC: Operation not
#     permitted"): the machine's own hard limits, nproc at most 32768 (podman lowers its own nproc
#     limit to 32768 when it cannot raise it, and the runtime inherits that).
# Idempotent; installing needs root.
set -euo pipefail

need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
[ -x /usr/libexec/podman/catatonit ] || command -v catatonit >/dev/null 2>&1 || need+=(catatonit)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v iptables >/dev/null 2>&1 || need+=(iptables)  # the cross-silo test separates its networks
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup.sh: missing ${need[*]}; install them (Debian: apt-get install ${need[*]}) or run as root" >&2
        exit 1
    fi
    echo "setup.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" uidmap >/dev/null
fi

conf=/etc/containers/containers.conf.d/tff-k8s.conf  # a drop-in: the machine's own containers.conf stays as it is
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
[ "$nofile" = unlimited ] && nofile=1048576
want=$(printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n[engine]\nruntime = "runc"\n' \
    "$nofile" "$nofile" "$nproc" "$nproc")
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
    mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$want" >"$conf"
    echo "setup.sh: podman configured in $conf: runtime runc, ulimits nofile=$nofile nproc=$nproc"
fi
podman --version
