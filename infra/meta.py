"""Object metadata shared by every namespaced resource."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s


def object_meta(
    name: pulumi.Input[str],
    namespace: pulumi.Input[str] | None,
    labels: dict[str, str],
    annotations: Mapping[str, pulumi.Input[str]] | None = None,
) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels, annotations=annotations)


def child(parent: pulumi.Resource, **kwargs: object) -> pulumi.ResourceOptions:
    """Options for a resource owned by a component (the provider is inherited from the parent)."""
    return pulumi.ResourceOptions(parent=parent, **kwargs)  # type: ignore[arg-type]


def logical(site: str, name: str) -> str:
    """A resource's Pulumi name: the same Kubernetes name in several clusters (a silo's ``tff-client``)
    needs one of its own per cluster; the hub's (``site`` empty) keep the names they always had."""
    return f"{site}/{name}" if site else name
