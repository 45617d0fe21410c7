"""The Pulumi program: typed stack config -> one Kubernetes provider per cluster -> components -> outputs.

One cluster: the Federation component (server and clients). Cross-silo (``deployment.silos``): the hub's
Federation (the server alone) on the hub's provider, and a FederationSilo on each silo's own provider,
with the certificates that tie them together (infra/pki.py)."""

from __future__ import annotations

import dataclasses
import shlex

import pulumi
import pulumi_kubernetes as k8s

from infra.clusters import HUB, provider_name
from infra.config_objects import for_pods
from infra.federation import Federation
from infra.labels import CLIENT, Labels
from infra.pki import FederationPki
from infra.silo import FederationSilo
from infra.stack_inputs import read_credentials, read_stack_config
from infra.stack_schema import StackConfig
from infra.stack_workloads import KubernetesTarget
from infra.task_bundle import read_bundle


def provider(cluster: str, target: KubernetesTarget) -> k8s.Provider:
    return k8s.Provider(provider_name(cluster), context=target.context, kubeconfig=target.kubeconfig)


def kubectl(target: KubernetesTarget, namespace: str, *args: str) -> str:
    flags = ["--context", target.context] if target.context else []
    if target.kubeconfig and "\n" not in target.kubeconfig:  # a path, not inline contents
        flags += ["--kubeconfig", target.kubeconfig]
    return shlex.join(["kubectl", *flags, "--namespace", namespace, *args])


def client_logs(cfg: StackConfig) -> str:
    """Every client Pod's log, followed, in the namespace ``cfg`` describes."""
    d = cfg.deployment
    clients = ",".join(f"{k}={v}" for k, v in Labels(d.instance).selector(CLIENT).items())
    return kubectl(
        d.kubernetes,
        d.namespace,
        "logs",
        "--follow",
        "--prefix",
        f"--max-log-requests={d.clients.replicas}",
        "--selector",
        clients,
    )


def main() -> None:
    config = pulumi.Config()
    cfg = read_stack_config(config)  # every check runs before the first resource is declared
    creds = read_credentials(config, cfg)
    d = cfg.deployment
    hub = provider(HUB, d.kubernetes)
    pki = FederationPki(f"{d.instance}-pki", cfg, creds) if cfg.cross_silo else None
    if pki is not None:
        creds = dataclasses.replace(creds, server_tls=pki.server_tls)
    federation = Federation(
        d.instance,
        cfg,
        creds,
        opts=pulumi.ResourceOptions(provider=hub),
        allowlist=pki.allowlist if pki is not None else None,
    )
    pulumi.export("namespace", federation.namespace)
    pulumi.export("serverAddress", federation.server_address)
    pulumi.export("image", d.image.ref)
    pulumi.export("runId", for_pods(cfg.federation, read_bundle(cfg.federation.task)).run_id)
    pulumi.export("logsCommand", kubectl(d.kubernetes, d.namespace, "logs", "--follow", f"pod/{d.server.name}"))
    if pki is None:
        pulumi.export("clientReplicas", d.clients.replicas)
        pulumi.export("clientLogsCommand", client_logs(cfg))
        return
    pulumi.export("clientReplicas", sum(s.clients.replicas for s in d.silos))
    pulumi.export("publicAddress", d.hub.public_address)
    pulumi.export("siloFingerprints", {name: m.fingerprint for name, m in pki.silos.items()})
    silos = {}
    for silo in d.silos:
        declared = FederationSilo(
            silo.name,
            cfg,
            silo,
            pki.silos[silo.name],
            creds.auth,
            opts=pulumi.ResourceOptions(provider=provider(silo.name, silo.kubernetes)),
        )
        site = cfg.for_silo(silo)
        silos[silo.name] = {
            "namespace": declared.namespace,
            "clientReplicas": silo.clients.replicas,
            "logsCommand": client_logs(site),
        }
    pulumi.export("silos", silos)

