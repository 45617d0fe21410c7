"""The NetworkPolicies admit exactly: every Pod -> cluster DNS, clients -> server gRPC, and (where a
stack configures it) the monitoring namespace -> server metrics. Evaluated with Kubernetes' rules
(a Pod selected by no policy of a direction is open in it; otherwise some rule must admit)."""

from __future__ import annotations

import ipaddress
import itertools
from typing import Any, NamedTuple

from infra_stacks import Declared

from infra.harness.mocked import run_program
from infra.manifests import pod_labels
from infra.stack_config import parse
from infra.stack_files import stack_config

NS_LABEL = "kubernetes.io/metadata.name"


class Pod(NamedTuple):
    """An endpoint: a Pod (namespace, labels, its IP) or, with namespace "", an address that is no Pod."""

    name: str
    namespace: str
    labels: dict[str, str]
    ip: str | None = None


def _matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    selector = selector or {}
    assert not selector.get("matchExpressions"), "extend the evaluator before using matchExpressions"
    return (selector.get("matchLabels") or {}).items() <= labels.items()


def _peer_admits(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if pod.ip is None:
            raise AssertionError(f"ipBlock {block} against {pod.name}, which has no address in this world")
        ip = ipaddress.ip_address(pod.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(x) for x in block.get("except") or []
        )
    if not pod.namespace:
        return False  # no Pod: only an ipBlock reaches it
    if "namespaceSelector" in peer:
        in_ns = _matches(peer["namespaceSelector"], {NS_LABEL: pod.namespace})
    else:
        in_ns = pod.namespace == policy_ns
    return in_ns and _matches(peer.get("podSelector"), pod.labels)


def _port_admits(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    return not ports or any(
        p.get("port") in (None, port) and p.get("protocol", "TCP") == protocol for p in ports
    )


def _side_admits(policies: list[dict], direction: str, me: Pod, peer: Pod, port: int, protocol: str) -> bool:
    ns = me.namespace
    mine = [
        p
        for p in policies
        if p["metadata"]["namespace"] == ns
        and _matches(p["spec"]["podSelector"], me.labels)
        and direction in p["spec"]["policyTypes"]
    ]
    if not mine:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in mine:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_admits(x, ns, peer) for x in peers)) and _port_admits(
                rule.get("ports"), port, protocol
            ):
                return True
    return False


def admitted(policies: list[dict], pods: list[Pod], ports: list[int], namespace: str) -> set[tuple]:
    """(source, destination, port, protocol) for every connection both sides' policies admit."""
    out = set()
    for src, dst in itertools.permutations(pods, 2):
        if namespace not in (src.namespace, dst.namespace):
            continue
        for port, protocol in itertools.product(ports, ("TCP", "UDP")):
            if _side_admits(policies, "Egress", src, dst, port, protocol) and _side_admits(
                policies, "Ingress", dst, src, port, protocol
            ):
                out.add((src.name, dst.name, port, protocol))
    return out


def _world(stack: Declared) -> list[Pod]:
    ns = stack.cfg.deployment.namespace
    return [
        Pod("server", ns, stack.server_pod["metadata"]["labels"], "10.244.1.10"),
        Pod("client", ns, pod_labels(stack.client_deployment), "10.244.2.11"),
        Pod("stray", ns, {"app": "debug"}, "10.244.1.12"),
        Pod("dns", "kube-system", {"k8s-app": "kube-dns"}, "10.244.0.5"),
        Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.244.0.7"),
        Pod(
            "outsider",
            "default",
            {
                "app.kubernetes.io/name": "tff-k8s",
                "app.kubernetes.io/component": "client",
                "app.kubernetes.io/instance": "tff-k8s",
            },
            "10.244.2.20",
        ),
        Pod("node-local-dns", "", {}, ip="169.254.20.10"),  # a node's DNS cache: no Pod, an address
        Pod("internet", "", {}, ip="93.184.216.34"),
    ]


def _with_dns_cidrs(stack: str, cidrs: list[str]) -> Declared:
    raw = stack_config(stack)
    deployment = dict(raw["tff-k8s:deployment"])
    deployment["network"] = {**deployment.get("network", {}), "dns_cidrs": cidrs}
    run = run_program(stack, overrides={"tff-k8s:deployment": deployment})
    return Declared(stack, run, parse(deployment, raw["tff-k8s:federation"]))


def test_policies_admit_exactly_dns_and_client_to_server(stack: Declared) -> None:
    fed = stack.cfg.federation
    ports = [53, fed.server.port, fed.server.metrics_port, fed.client.health_port, 443, 8080]
    got = admitted(stack.kind("NetworkPolicy"), _world(stack), ports, stack.cfg.deployment.namespace)
    want = {(pod, "dns", 53, proto) for pod in ("server", "client", "stray") for proto in ("TCP", "UDP")}
    want.add(("client", "server", fed.server.port, "TCP"))
    if stack.cfg.deployment.network.metrics_from is not None:
        want.add(("prometheus", "server", fed.server.metrics_port, "TCP"))
    assert got == want, {"unexpected": got - want, "missing": want - got}


def test_dns_cidrs_admit_node_local_dns_on_port_53_and_nothing_else(stack: Declared) -> None:
    """A node-local DNS cache listens on a link-local address, not in a Pod a selector can name: with
    deployment.network.dns_cidrs the namespace's Pods reach it on port 53, and only there."""
    fed = stack.cfg.federation
    ports = [53, fed.server.port, 443, 8080]
    namespace = stack.cfg.deployment.namespace
    before = admitted(stack.kind("NetworkPolicy"), _world(stack), ports, namespace)
    opened = _with_dns_cidrs(stack.stack, ["169.254.20.10"])  # a bare address: /32
    after = admitted(opened.kind("NetworkPolicy"), _world(opened), ports, namespace)
    new = {
        (pod, "node-local-dns", 53, proto)
        for pod in ("server", "client", "stray")
        for proto in ("TCP", "UDP")
    }
    assert after - before == new and before <= after
    (dns,) = [p for p in opened.kind("NetworkPolicy") if p["metadata"]["name"].endswith("-allow-dns")]
    assert {"ipBlock": {"cidr": "169.254.20.10/32"}} in dns["spec"]["egress"][0]["to"]


def test_default_deny_covers_every_pod_both_ways(stack: Declared) -> None:
    deny = [
        p
        for p in stack.kind("NetworkPolicy")
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1


def test_evaluator_sees_an_open_namespace_as_open(stack: Declared) -> None:
    """Guard against a vacuous evaluator: without the policies, everything in the namespace is reachable."""
    pods = _world(stack)
    got = admitted([], pods, [8080], stack.cfg.deployment.namespace)
    assert ("stray", "server", 8080, "TCP") in got and ("outsider", "client", 8080, "UDP") in got
