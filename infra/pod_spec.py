"""Pod and container building blocks both workloads share: Pod Security "restricted" contexts,
requests/limits, gRPC probes and the entrypoint. One definition, used by the server and the clients."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pulumi
import pulumi_kubernetes as k8s

from infra import layout
from infra.stack_workloads import Resources
from services.common.health import LIVE, READY

core = k8s.core.v1
PROBE_PERIOD_S = 5


def pod_security_context(uid: int) -> core.PodSecurityContextArgs:
    return core.PodSecurityContextArgs(
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        fs_group=uid,
        fs_group_change_policy="OnRootMismatch",
        seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
    )


def container_security_context(uid: int) -> core.SecurityContextArgs:
    return core.SecurityContextArgs(
        allow_privilege_escalation=False,
        capabilities=core.CapabilitiesArgs(drop=["ALL"]),
        privileged=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        run_as_user=uid,
        run_as_group=uid,
        seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
    )


def resource_requirements(res: Resources) -> core.ResourceRequirementsArgs:
    return core.ResourceRequirementsArgs(
        requests={"cpu": res.requests.cpu, "memory": res.requests.memory},
        limits={"cpu": res.limits.cpu, "memory": res.limits.memory},
    )


def grpc_probes(port: int, startup_budget_s: float) -> tuple[core.ProbeArgs, core.ProbeArgs, core.ProbeArgs]:
    """(startup, readiness, liveness) on the plaintext grpc.health.v1 port (services/common/health.py):
    start-up and liveness ask whether the process answers, readiness whether it does its job (the
    server: restored and listening; a client: joined and reaching the server). The health endpoint
    starts before TensorFlow loads; ``startup_budget_s`` bounds how long that may take. Timeouts are
    5 s: a probe answered by a CPU-throttled container can take longer than the 1 s default."""
    live, ready = core.GRPCActionArgs(port=port, service=LIVE), core.GRPCActionArgs(port=port, service=READY)
    startup = core.ProbeArgs(
        grpc=live,
        period_seconds=PROBE_PERIOD_S,
        timeout_seconds=5,
        failure_threshold=max(1, math.ceil(startup_budget_s / PROBE_PERIOD_S)),
    )
    readiness = core.ProbeArgs(grpc=ready, period_seconds=PROBE_PERIOD_S, timeout_seconds=5, failure_threshold=2)
    liveness = core.ProbeArgs(grpc=live, period_seconds=20, timeout_seconds=5, failure_threshold=3)
    return startup, readiness, liveness


def federation_container(
    role: layout.Role,
    *,
    image: str,
    pull_policy: str,
    uid: int,
    resources: Resources,
    ports: Mapping[str, int],
    probe_port: int,
    startup_budget_s: float,
    mounts: list[core.VolumeMountArgs],
    env: Mapping[str, pulumi.Input[str]] | None = None,
) -> core.ContainerArgs:
    startup, readiness, liveness = grpc_probes(probe_port, startup_budget_s)
    return core.ContainerArgs(
        name=role,
        image=image,
        image_pull_policy=pull_policy,
        command=layout.command(role),
        args=layout.args(),
        env=[core.EnvVarArgs(name=k, value=v) for k, v in (env or {}).items()] or None,
        ports=[core.ContainerPortArgs(name=n, container_port=p, protocol="TCP") for n, p in ports.items()],
        resources=resource_requirements(resources),
        security_context=container_security_context(uid),
        volume_mounts=mounts,
        startup_probe=startup,
        readiness_probe=readiness,
        liveness_probe=liveness,
    )


def federation_pod_spec(
    container: core.ContainerArgs,
    *,
    service_account: pulumi.Input[str],
    uid: int,
    volumes: list[core.VolumeArgs],
    pull_secrets: Sequence[str] = (),
    restart_policy: str | None = None,
    topology_spread_constraints: list[core.TopologySpreadConstraintArgs] | None = None,
) -> core.PodSpecArgs:
    return core.PodSpecArgs(
        service_account_name=service_account,
        automount_service_account_token=False,
        enable_service_links=False,
        security_context=pod_security_context(uid),
        containers=[container],
        image_pull_secrets=[core.LocalObjectReferenceArgs(name=name) for name in pull_secrets] or None,
        volumes=volumes,
        restart_policy=restart_policy,
        topology_spread_constraints=topology_spread_constraints,
    )
