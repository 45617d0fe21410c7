"""Network isolation: deny everything in the namespace, then allow DNS (the DNS Pods, and any address
ranges deployment.network.dns_cidrs names), clients -> server gRPC, and (when configured) a monitoring
namespace -> server metrics."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.labels import CLIENT, SERVER, Labels
from infra.meta import child, object_meta
from infra.stack_config import PeerSelector, StackConfig

net, meta_v1 = k8s.networking.v1, k8s.meta.v1
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace


def _peer(peer: PeerSelector) -> net.NetworkPolicyPeerArgs:
    return net.NetworkPolicyPeerArgs(
        namespace_selector=meta_v1.LabelSelectorArgs(match_labels={NAMESPACE_NAME_LABEL: peer.namespace}),
        pod_selector=meta_v1.LabelSelectorArgs(match_labels=peer.pod_labels or None),
    )


def _tcp(port: int) -> net.NetworkPolicyPortArgs:
    return net.NetworkPolicyPortArgs(port=port, protocol="TCP")


class NetworkIsolation(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        labels: Labels,
        namespace: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("tff-k8s:network:NetworkIsolation", name, None, opts)
        self._prefix, self._namespace, self._labels = cfg.deployment.instance, namespace, labels.of("network")
        fed, network = cfg.federation, cfg.deployment.network
        server = meta_v1.LabelSelectorArgs(match_labels=labels.selector(SERVER))
        clients = meta_v1.LabelSelectorArgs(match_labels=labels.selector(CLIENT))
        everyone = meta_v1.LabelSelectorArgs()
        self._policy("default-deny", everyone, ingress=[], egress=[])
        # A selector can only name Pods: resolvers that are not Pods (node-local DNS caches on managed
        # clusters, listening on a link-local address) are reached through optional ipBlocks.
        resolvers = [net.NetworkPolicyPeerArgs(ip_block=net.IPBlockArgs(cidr=c)) for c in network.dns_cidrs]
        self._policy(
            "allow-dns",
            everyone,
            egress=[
                net.NetworkPolicyEgressRuleArgs(
                    to=[_peer(network.dns), *resolvers],
                    ports=[net.NetworkPolicyPortArgs(port=53, protocol=p) for p in ("UDP", "TCP")],
                )
            ],
        )
        self._policy(
            "clients-to-server",
            clients,
            egress=[
                net.NetworkPolicyEgressRuleArgs(
                    to=[net.NetworkPolicyPeerArgs(pod_selector=server)],
                    ports=[_tcp(fed.server.port)],
                )
            ],
        )
        self._policy(
            "server-from-clients",
            server,
            ingress=[
                net.NetworkPolicyIngressRuleArgs(
                    from_=[net.NetworkPolicyPeerArgs(pod_selector=clients)],
                    ports=[_tcp(fed.server.port)],
                )
            ],
        )
        if network.metrics_from is not None:
            self._policy(
                "metrics-scrape",
                server,
                ingress=[
                    net.NetworkPolicyIngressRuleArgs(
                        from_=[_peer(network.metrics_from)],
                        ports=[_tcp(fed.server.metrics_port)],
                    )
                ],
            )
        self.register_outputs({})

    def _policy(
        self,
        suffix: str,
        pods: meta_v1.LabelSelectorArgs,
        ingress: list[net.NetworkPolicyIngressRuleArgs] | None = None,
        egress: list[net.NetworkPolicyEgressRuleArgs] | None = None,
    ) -> None:
        types = [t for t, rules in (("Ingress", ingress), ("Egress", egress)) if rules is not None]
        name = f"{self._prefix}-{suffix}"
        net.NetworkPolicy(
            name,
            metadata=object_meta(name, self._namespace, self._labels),
            spec=net.NetworkPolicySpecArgs(
                pod_selector=pods, policy_types=types, ingress=ingress, egress=egress
            ),
            opts=child(self),
        )
