"""The rules the policy pack enforces on each resource alone, as pure functions over its Kubernetes
inputs (:mod:`policy.objects` reads them): each takes the object's kind and props and returns the
problems it finds, one message each; an empty list means the resource complies.
:mod:`policy.tff_policies` wraps them into CrossGuard resource policies. No Pulumi, no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra.image_ref import check_image
from policy.objects import RECOMMENDED_LABELS, containers, describe, is_map, items_of, lookup, pod_specs

COMPUTE = (("requests", "cpu"), ("requests", "memory"), ("limits", "cpu"), ("limits", "memory"))
SECCOMP_ALLOWED = ("RuntimeDefault", "Localhost")
CAPABILITIES_ADD_ALLOWED = ("NET_BIND_SERVICE",)  # the only one Pod Security "restricted" allows


def container_resources(kind: str, props: Mapping[str, Any]) -> list[str]:
    """Every container and init container sets cpu and memory requests and limits."""
    problems = []
    for pod in pod_specs(kind, props):
        for label, container in containers(pod.spec, ephemeral=False):
            missing = [
                f"{section}.{res}"
                for section, res in COMPUTE
                if lookup(container, "resources", section, res) in (None, "")
            ]
            if missing:
                problems.append(f"{describe(kind, props)} {label}: missing {', '.join(missing)}")
    return problems


def pod_security_restricted(kind: str, props: Mapping[str, Any]) -> list[str]:
    """Pod Security "restricted", plus a read-only root filesystem: non-root, no privilege escalation,
    every capability dropped, RuntimeDefault (or Localhost) seccomp, no host namespaces or paths."""
    problems = []
    where = describe(kind, props)
    for pod in pod_specs(kind, props):
        spec = pod.spec
        pod_ctx = lookup(spec, "securityContext") or {}
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(field) is True:
                problems.append(f"{where}: {pod.path}.{field} is true")
        for volume in items_of(spec.get("volumes")):
            if is_map(volume) and volume.get("hostPath") is not None:
                problems.append(f"{where}: volume {volume.get('name')!r} is a hostPath")
        for label, container in containers(spec):
            ctx = lookup(container, "securityContext") or {}

            def effective(field: str, ctx: Any = ctx, pod_ctx: Any = pod_ctx) -> Any:
                value = lookup(ctx, field)
                return lookup(pod_ctx, field) if value is None else value

            bad = []
            if lookup(ctx, "privileged") is True:
                bad.append("privileged is true")
            if lookup(ctx, "allowPrivilegeEscalation") is not False:
                bad.append("allowPrivilegeEscalation must be false")
            if effective("runAsNonRoot") is not True:
                bad.append("runAsNonRoot must be true (container or Pod securityContext)")
            if effective("runAsUser") == 0:
                bad.append("runAsUser must not be 0")
            drop = [str(c) for c in items_of(lookup(ctx, "capabilities", "drop"))]
            if "ALL" not in drop:
                bad.append("capabilities.drop must include ALL")
            added = [str(c) for c in items_of(lookup(ctx, "capabilities", "add"))]
            if extra := [c for c in added if c not in CAPABILITIES_ADD_ALLOWED]:
                bad.append(f"capabilities.add {extra} is not allowed")
            if lookup(ctx, "readOnlyRootFilesystem") is not True:
                bad.append("readOnlyRootFilesystem must be true")
            seccomp = lookup(ctx, "seccompProfile", "type") or lookup(pod_ctx, "seccompProfile", "type")
            if seccomp not in SECCOMP_ALLOWED:
                bad.append(f"seccompProfile.type must be RuntimeDefault or Localhost, not {seccomp!r}")
            if bad:
                problems.append(f"{where} {label}: {'; '.join(bad)}")
    return problems


def image_pinned(kind: str, props: Mapping[str, Any], *, require_digest: bool) -> list[str]:
    """Every image has a tag or digest, never ``latest``; a digest when ``require_digest``."""
    problems = []
    for pod in pod_specs(kind, props):
        for label, container in containers(pod.spec):
            image = container.get("image")
            if not isinstance(image, str) or not image:
                problems.append(f"{describe(kind, props)} {label}: no image")
                continue
            try:
                check_image(image, require_digest=require_digest)
            except ValueError as exc:
                problems.append(f"{describe(kind, props)} {label}: {exc}")
    return problems


def no_load_balancer(kind: str, props: Mapping[str, Any], *, allowed: bool) -> list[str]:
    """No Service of type LoadBalancer unless the stack allows it."""
    if kind != "Service" or allowed or lookup(props, "spec", "type") != "LoadBalancer":
        return []
    return [
        f"{describe(kind, props)} is type LoadBalancer, which exposes it outside the cluster; use ClusterIP, "
        "or set deployment.network.allow_load_balancer: true in the stack config"
    ]


def recommended_labels(kind: str, props: Mapping[str, Any]) -> list[str]:
    """The object and the Pods it runs carry every Kubernetes recommended label, non-empty."""
    problems = []
    labels = lookup(props, "metadata", "labels")
    targets = [("metadata.labels", labels if is_map(labels) else {})]
    targets += [
        (f"{p.path.removesuffix('.spec')}.metadata.labels", p.labels)
        for p in pod_specs(kind, props)
        if kind != "Pod"
    ]
    for where, found in targets:
        missing = [k for k in RECOMMENDED_LABELS if not found.get(k)]
        if missing:
            problems.append(f"{describe(kind, props)}: {where} lacks {', '.join(missing)}")
    return problems


def client_data_read_only(kind: str, props: Mapping[str, Any]) -> list[str]:
    """Client Pods (app.kubernetes.io/component: client) mount every PersistentVolumeClaim read-only,
    in the volume and in each mount: a client reads its data set, it never writes into it (and many
    clients share one claim)."""
    problems = []
    for pod in pod_specs(kind, props):
        if pod.labels.get("app.kubernetes.io/component") != "client":
            continue
        claims = [v for v in items_of(pod.spec.get("volumes")) if is_map(lookup(v, "persistentVolumeClaim"))]
        for volume in claims:
            name = volume.get("name")
            if lookup(volume, "persistentVolumeClaim", "readOnly") is not True:
                problems.append(f"{describe(kind, props)}: volume {name!r} must set persistentVolumeClaim.readOnly: true")
            for label, container in containers(pod.spec, ephemeral=True):
                for mount in items_of(container.get("volumeMounts")):
                    if mount.get("name") == name and mount.get("readOnly") is not True:
                        problems.append(f"{describe(kind, props)} {label}: mount of {name!r} must be readOnly")
    return problems
