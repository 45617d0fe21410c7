"""The Pulumi program: typed stack config -> Kubernetes provider -> Federation component -> outputs."""

from __future__ import annotations

import shlex

import pulumi
import pulumi_kubernetes as k8s

from infra.federation import Federation
from infra.labels import CLIENT, Labels
from infra.stack_config import StackConfig
from infra.stack_inputs import read_credentials, read_stack_config


def provider(cfg: StackConfig) -> k8s.Provider:
    target = cfg.deployment.kubernetes
    return k8s.Provider("kubernetes", context=target.context, kubeconfig=target.kubeconfig)


def kubectl(cfg: StackConfig, *args: str) -> str:
    target = cfg.deployment.kubernetes
    flags = ["--context", target.context] if target.context else []
    if target.kubeconfig and "\n" not in target.kubeconfig:  # a path, not inline contents
        flags += ["--kubeconfig", target.kubeconfig]
    return shlex.join(["kubectl", *flags, "--namespace", cfg.deployment.namespace, *args])


def main() -> None:
    config = pulumi.Config()
    cfg = read_stack_config(config)  # every check runs before the first resource is declared
    creds = read_credentials(config, cfg)
    federation = Federation(
        cfg.deployment.instance, cfg, creds, opts=pulumi.ResourceOptions(provider=provider(cfg))
    )
    d = cfg.deployment
    pulumi.export("namespace", federation.namespace)
    pulumi.export("serverAddress", federation.server_address)
    pulumi.export("clientReplicas", d.clients.replicas)
    pulumi.export("image", d.image.ref)
    pulumi.export("runId", cfg.federation.run_id)
    pulumi.export("logsCommand", kubectl(cfg, "logs", "--follow", f"pod/{d.server.name}"))
    clients = ",".join(f"{k}={v}" for k, v in Labels(d.instance).selector(CLIENT).items())
    pulumi.export(
        "clientLogsCommand",
        kubectl(
            cfg,
            "logs",
            "--follow",
            "--prefix",
            f"--max-log-requests={d.clients.replicas}",
            "--selector",
            clients,
        ),
    )
