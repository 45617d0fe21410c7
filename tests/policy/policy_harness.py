"""Drive the policies the way the Pulumi engine does, without the CLI, and compliant example objects.

Two paths: the public one (``ResourceValidationArgs``/``StackValidationArgs`` with the inputs wrapped in
pulumi-policy's unknown-checking proxy, as the engine hands them over) and the engine's own analyzer
service (``Configure``/``Analyze``/``AnalyzeStack`` over protobuf requests, as ``pulumi preview`` calls it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format, struct_pb2
from pulumi.runtime import proto
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.policy import _PolicyAnalyzerServicer
from pulumi_policy.proxy import unknown_checking_proxy

from infra.declared import Resource
from policy.tff_policies import ENFORCEMENT, PACK_NAME, POLICIES

POD = "kubernetes:core/v1:Pod"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
STATEFUL_SET = "kubernetes:apps/v1:StatefulSet"
CRON_JOB = "kubernetes:batch/v1:CronJob"
SERVICE = "kubernetes:core/v1:Service"
NAMESPACE = "kubernetes:core/v1:Namespace"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
CLAIM = "kubernetes:core/v1:PersistentVolumeClaim"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"

OPTS = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])


def urn(type_: str, name: str, stack: str = "test") -> str:
    return f"urn:pulumi:{stack}::tff-k8s::{type_}::{name}"


def resource_violations(
    policy: ResourceValidationPolicy,
    type_: str,
    props: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
) -> list[str]:
    """What ``policy`` reports for one resource (its inputs proxied as the engine does)."""
    found: list[str] = []
    name = str(props.get("metadata", {}).get("name", "r"))
    args = ResourceValidationArgs(
        type_, unknown_checking_proxy(dict(props)), urn(type_, name), name, OPTS, None, config
    )
    result = policy.validate(args, lambda message, _urn=None: found.append(message))
    assert result is None, "the tff-k8s policies are synchronous"
    return found


@dataclass(frozen=True)
class StackViolation:
    message: str
    urn: str | None


def stack_violations(
    policy: StackValidationPolicy,
    resources: Iterable[tuple[str, Mapping[str, Any]]],
    config: Mapping[str, Any] | None = None,
) -> list[StackViolation]:
    declared = [
        PolicyResource(
            t,
            unknown_checking_proxy(dict(p)),
            urn(t, str(p.get("metadata", {}).get("name", i))),
            str(i),
            OPTS,
            None,
            None,
            [],
            {},
        )
        for i, (t, p) in enumerate(resources)
    ]
    found: list[StackViolation] = []
    policy.validate(
        StackValidationArgs(declared, config),
        lambda message, u=None: found.append(StackViolation(message, u)),
    )
    return found


# --- the engine's analyzer service -------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    policy: str
    message: str
    urn: str
    mandatory: bool


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    json_format.ParseDict(dict(value), struct)
    return struct


def analyzer(config: Mapping[str, Mapping[str, Any]] | None = None) -> _PolicyAnalyzerServicer:
    """The analyzer ``PolicyPack`` serves to the CLI, configured as ``--policy-pack-config`` would."""
    servicer = _PolicyAnalyzerServicer(PACK_NAME, "0.1.0", list(POLICIES), ENFORCEMENT)
    policy_config = {
        name: proto.PolicyConfig(enforcementLevel=proto.MANDATORY, properties=_struct(props))
        for name, props in (config or {}).items()
    }
    servicer.Configure(proto.ConfigureAnalyzerRequest(policyConfig=policy_config), None)
    return servicer


def _diagnostics(response: Any) -> list[Diagnostic]:
    return [
        Diagnostic(d.policyName, d.message, d.urn, d.enforcementLevel == proto.MANDATORY)
        for d in response.diagnostics
    ]


def analyze(
    resources: Iterable[Resource], config: Mapping[str, Mapping[str, Any]] | None = None, stack: str = "test"
) -> list[Diagnostic]:
    """Every resource through ``Analyze``, then the whole stack through ``AnalyzeStack``."""
    servicer = analyzer(config)
    found: list[Diagnostic] = []
    stack_resources = []
    for r in resources:
        kwargs = {
            "type": r.type,
            "properties": _struct(r.inputs),
            "urn": urn(r.type, r.name, stack),
            "name": r.name,
        }
        if r.provider:  # "<provider urn>::<id>", as the engine names a resource's provider
            provider_urn = r.provider.rsplit("::", 1)[0]
            kwargs["provider"] = proto.AnalyzerProviderResource(
                type=provider_urn.split("::")[-2], urn=provider_urn, name=provider_urn.split("::")[-1]
            )
        found += _diagnostics(servicer.Analyze(proto.AnalyzeRequest(**kwargs), None))
        stack_resources.append(proto.AnalyzerResource(**kwargs))
    found += _diagnostics(servicer.AnalyzeStack(proto.AnalyzeStackRequest(resources=stack_resources), None))
    return found


# --- compliant examples -----------------------------------------------------------------------------

LABELS = {
    "app.kubernetes.io/name": "tff-k8s",
    "app.kubernetes.io/instance": "tff-k8s",
    "app.kubernetes.io/component": "server",
    "app.kubernetes.io/part-of": "tff-k8s",
    "app.kubernetes.io/managed-by": "pulumi",
}
DIGEST = "sha256:" + "ab" * 32


def container(name: str = "server", image: str = "ghcr.io/tff-k8s/server:0.1.0") -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        },
        "volumeMounts": [{"name": "checkpoints", "mountPath": "/var/lib/tff-k8s"}],
    }


def pod_spec(**overrides: Any) -> dict[str, Any]:
    spec = {
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container()],
        "volumes": [
            {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "tff-server-checkpoints"}}
        ],
    }
    return {**spec, **overrides}


def metadata(name: str = "tff-server", namespace: str | None = "tff-k8s", **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**LABELS, **labels}}
    if namespace:
        meta["namespace"] = namespace
    return meta


def pod(**spec_overrides: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata(), "spec": pod_spec(**spec_overrides)}


def deployment(name: str = "tff-client", component: str = "client") -> dict[str, Any]:
    spec = pod_spec(volumes=[])
    spec["containers"] = [{**container("client"), "volumeMounts": []}]
    labels = {**LABELS, "app.kubernetes.io/component": component}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(name, **{"app.kubernetes.io/component": component}),
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def cron_job() -> dict[str, Any]:
    d = deployment("tff-report", "report")
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": d["metadata"],
        "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": d["spec"]["template"]}}},
    }


def default_deny(namespace: str = "tff-k8s") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata("tff-k8s-default-deny", namespace, **{"app.kubernetes.io/component": "network"}),
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []},
    }


def namespace(name: str = "tff-k8s") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": metadata(name, None, **{"app.kubernetes.io/component": "namespace"}),
    }


def claim(name: str = "tff-server-checkpoints") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata(name),
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def service(type_: str = "ClusterIP") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(),
        "spec": {
            "type": type_,
            "selector": {"app.kubernetes.io/component": "server"},
            "ports": [{"port": 50051}],
        },
    }


def compliant_stack() -> list[tuple[str, dict[str, Any]]]:
    return [
        (NAMESPACE, namespace()),
        (NETWORK_POLICY, default_deny()),
        (CLAIM, claim()),
        (POD, pod()),
        (DEPLOYMENT, deployment()),
        (SERVICE, service()),
    ]
