"""What a cross-silo stack (deployment.silos set) must hold before any resource is declared: each
problem as (key, message), the key naming where to fix it. Pure Python, no Pulumi."""

from __future__ import annotations

from infra.clusters import HUB
from infra.stack_fields import ip_literal
from infra.stack_schema import StackConfig
from infra.stack_workloads import KubernetesTarget


def _cluster(target: KubernetesTarget) -> tuple[str | None, str | None]:
    """Two targets with the same kubeconfig and context are one cluster (None: the defaults)."""
    return (target.kubeconfig, target.context)


def cross_silo_problems(cfg: StackConfig) -> list[tuple[str, str]]:
    d, fed = cfg.deployment, cfg.federation
    hub, silos = d.hub, d.silos
    problems: list[tuple[str, str]] = []
    if "clients" in d.model_fields_set:
        problems.append(
            (
                "deployment.clients",
                "a cross-silo hub runs no clients: set each silo's clients (deployment.silos.<i>.clients) instead",
            )
        )
    if not fed.security.tls:
        problems.append(("federation.security.tls", "clients dial the hub across clusters: TLS is mandatory, set true"))
    elif not fed.security.mutual_tls:
        problems.append(
            (
                "federation.security.mutual_tls",
                "across clusters the server knows a silo by its client certificate only: set true",
            )
        )
    if hub.public_address is None:
        problems.append(
            (
                "deployment.hub.public_address",
                "silos dial the hub from their own clusters: set the host:port of its load balancer (or node port)",
            )
        )
    if hub.service_type == "LoadBalancer" and not d.network.allow_load_balancer:
        problems.append(
            (
                "deployment.network.allow_load_balancer",
                "deployment.hub.service_type LoadBalancer exposes the server outside its cluster: set it to true",
            )
        )
    if hub.service_type == "NodePort" and hub.node_port is None:
        problems.append(("deployment.hub.node_port", "service_type NodePort needs the port silos dial: set it"))
    if hub.service_type != "NodePort" and hub.node_port is not None:
        problems.append(("deployment.hub.node_port", "only for service_type NodePort: remove it"))
    seen_names: dict[str, int] = {}
    namespaces = {(_cluster(d.kubernetes), d.namespace): "the hub (deployment.namespace)"}
    for i, silo in enumerate(silos):
        key = f"deployment.silos.{i}"
        if silo.name in seen_names:
            problems.append(
                (f"{key}.name", f"{silo.name!r} is already deployment.silos.{seen_names[silo.name]}: rename one")
            )
        seen_names.setdefault(silo.name, i)
        if silo.name == HUB:
            problems.append((f"{key}.name", f"{HUB!r} names the server's cluster (render folders, outputs): rename it"))
        where = (_cluster(silo.kubernetes), silo.namespace)
        if where in namespaces:
            problems.append(
                (
                    f"{key}.namespace",
                    f"{silo.namespace!r} on the same cluster (kubeconfig {silo.kubernetes.kubeconfig}, context "
                    f"{silo.kubernetes.context}) as {namespaces[where]}: give it its own namespace",
                )
            )
        namespaces.setdefault(where, f"{key} ({silo.name})")
        if hub.ca == "generate" and not silo.identity.generate:
            problems.append(
                (
                    f"{key}.identity.generate",
                    "the hub's CA is generated (deployment.hub.ca: generate), so only the program can sign this "
                    "silo's certificate: set true",
                )
            )
        if silo.hub_cidr is None and hub.public_address is not None and ip_literal(hub.host) is None:
            problems.append(
                (
                    f"{key}.hub_cidr",
                    f"the hub's address {hub.host!r} is a name: set the CIDR block its clients may dial it in",
                )
            )
        if silo.clients.max_disrupted > silo.clients.replicas:
            problems.append(
                (
                    f"{key}.clients.max_disrupted",
                    f"{silo.clients.max_disrupted} exceeds replicas ({silo.clients.replicas})",
                )
            )
    replicas = sum(s.clients.replicas for s in silos)
    if replicas < fed.training.min_clients:
        problems.append(
            (
                "deployment.silos",
                f"{replicas} client replicas in all silos is below federation.training.min_clients "
                f"({fed.training.min_clients}); no round could start: add replicas or lower min_clients",
            )
        )
    return problems
