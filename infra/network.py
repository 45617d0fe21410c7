"""Network isolation: deny everything in the namespace, then allow DNS (the DNS Pods, and any address
ranges deployment.network.dns_cidrs names), the federation's link, and (when configured) a monitoring
namespace -> server metrics. The link: clients -> server gRPC in one cluster; across clusters, the hub's
server port from the silos' ranges (deployment.hub.silo_cidrs) and each silo's clients -> the hub's
address (deployment.silos[i].hub_cidr)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from infra.labels import CLIENT, SERVER, Labels
from infra.meta import child, logical, object_meta
from infra.stack_schema import Silo, StackConfig
from infra.stack_workloads import PeerSelector

net, meta_v1 = k8s.networking.v1, k8s.meta.v1
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


def _peer(peer: PeerSelector) -> net.NetworkPolicyPeerArgs:
    return net.NetworkPolicyPeerArgs(
        namespace_selector=meta_v1.LabelSelectorArgs(match_labels={NAMESPACE_NAME_LABEL: peer.namespace}),
        pod_selector=meta_v1.LabelSelectorArgs(match_labels=peer.pod_labels or None),
    )


def _tcp(port: int) -> net.NetworkPolicyPortArgs:
    return net.NetworkPolicyPortArgs(port=port, protocol="TCP")


@dataclass(frozen=True)
class Allow:
    """One explicit allow on top of default-deny: a NetworkPolicy named ``<instance>-<suffix>``."""

    suffix: str
    pods: meta_v1.LabelSelectorArgs
    ingress: list[net.NetworkPolicyIngressRuleArgs] | None = None
    egress: list[net.NetworkPolicyEgressRuleArgs] | None = None


def _ip_blocks(cidrs: Sequence[str]) -> list[net.NetworkPolicyPeerArgs]:
    return [net.NetworkPolicyPeerArgs(ip_block=net.IPBlockArgs(cidr=c)) for c in cidrs]


def in_cluster_link(cfg: StackConfig, labels: Labels) -> list[Allow]:
    """One cluster: clients -> server gRPC, both ways round."""
    port = cfg.federation.server.port
    server = meta_v1.LabelSelectorArgs(match_labels=labels.selector(SERVER))
    clients = meta_v1.LabelSelectorArgs(match_labels=labels.selector(CLIENT))
    return [
        Allow(
            "clients-to-server",
            clients,
            egress=[
                net.NetworkPolicyEgressRuleArgs(
                    to=[net.NetworkPolicyPeerArgs(pod_selector=server)], ports=[_tcp(port)]
                )
            ],
        ),
        Allow(
            "server-from-clients",
            server,
            ingress=[
                net.NetworkPolicyIngressRuleArgs(
                    from_=[net.NetworkPolicyPeerArgs(pod_selector=clients)], ports=[_tcp(port)]
                )
            ],
        ),
    ]


def hub_ingress(cfg: StackConfig, labels: Labels) -> list[Allow]:
    """Cross-silo hub: the server port from the silos' source ranges (any source when none are set: the
    server still refuses every certificate but the silos')."""
    server = meta_v1.LabelSelectorArgs(match_labels=labels.selector(SERVER))
    sources = _ip_blocks(cfg.deployment.hub.silo_cidrs) or None
    rule = net.NetworkPolicyIngressRuleArgs(from_=sources, ports=[_tcp(cfg.federation.server.port)])
    return [Allow("server-from-silos", server, ingress=[rule])]


def silo_egress(cfg: StackConfig, silo: Silo, labels: Labels) -> list[Allow]:
    """Cross-silo silo: its clients may dial the hub's public address, and nothing else (but DNS)."""
    clients = meta_v1.LabelSelectorArgs(match_labels=labels.selector(CLIENT))
    rule = net.NetworkPolicyEgressRuleArgs(
        to=_ip_blocks([cfg.hub_cidr(silo)]), ports=[_tcp(cfg.deployment.hub.port)]
    )
    return [Allow("clients-to-hub", clients, egress=[rule])]


class NetworkIsolation(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        labels: Labels,
        namespace: pulumi.Input[str],
        allows: Sequence[Allow],
        *,
        metrics: bool = True,
        site: str = "",
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """Default-deny, DNS, the ``allows`` (the federation's link), and the metrics scrape when
        ``metrics`` (the namespace runs the server) and configured."""
        super().__init__("tff-k8s:network:NetworkIsolation", name, None, opts)
        self._prefix, self._namespace, self._labels = cfg.deployment.instance, namespace, labels.of("network")
        self._site = site
        fed, network = cfg.federation, cfg.deployment.network
        server = meta_v1.LabelSelectorArgs(match_labels=labels.selector(SERVER))
        everyone = meta_v1.LabelSelectorArgs()
        self._policy(Allow("default-deny", everyone, ingress=[], egress=[]))
        # A selector can only name Pods: resolvers that are not Pods (node-local DNS caches on managed
        # clusters, listening on a link-local address) are reached through optional ipBlocks.
        self._policy(
            Allow(
                "allow-dns",
                everyone,
                egress=[
                    net.NetworkPolicyEgressRuleArgs(
                        to=[_peer(network.dns), *_ip_blocks(network.dns_cidrs)],
                        ports=[net.NetworkPolicyPortArgs(port=53, protocol=p) for p in ("UDP", "TCP")],
                    )
                ],
            )
        )
        for allow in allows:
            self._policy(allow)
        if metrics and network.metrics_from is not None:
            self._policy(
                Allow(
                    "metrics-scrape",
                    server,
                    ingress=[
                        net.NetworkPolicyIngressRuleArgs(
                            from_=[_peer(network.metrics_from)],
                            ports=[_tcp(fed.server.metrics_port)],
                        )
                    ],
                )
            )
        self.register_outputs({})

    def _policy(self, allow: Allow) -> None:
        types = [t for t, rules in (("Ingress", allow.ingress), ("Egress", allow.egress)) if rules is not None]
        name = f"{self._prefix}-{allow.suffix}"
        net.NetworkPolicy(
            logical(self._site, name),
            metadata=object_meta(name, self._namespace, self._labels),
            spec=net.NetworkPolicySpecArgs(
                pod_selector=allow.pods, policy_types=types, ingress=allow.ingress, egress=allow.egress
            ),
            opts=child(self),
        )
