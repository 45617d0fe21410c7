"""The deployable product, run whole: the one image built from services/Dockerfile, started by the
Pods, Deployment and ConfigMap the Pulumi program declares (rendered under mocks), in real
containers with ``podman kube play`` (tests/containers/kube.py lists every change made to the
manifests for podman, with its reason).

What Kubernetes would show is what is asserted: restart counts, the health statuses the probes
ask for, the files on the server's volume; a finished federation must stay up without restarts.
Skipped where podman cannot run, except with CI=true, where it must run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kube import (
    Play,
    PodmanFiles,
    for_podman,
    free_subnet,
    played,
    records,
    rendered,
    stack_overrides,
    wait_for,
)
from support.grpc_health import health_status as health
from support.pki import make_pki
from support.prometheus import metric

from infra.stack_config import parse
from infra.stack_files import stack_config
from infra.stack_schema import StackConfig
from services.common.health import LIVE, READY

# The first test also builds the image (cold: debootstrap and a full build, several minutes).
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

ACCURACY = 0.90
START_S = 300  # image start, TensorFlow import and joins on a loaded 2-core machine
FINISHED_QUIET_S = 20  # how long a finished federation is watched for restarts


@dataclass
class Deployed:
    cfg: StackConfig
    play: Play
    server_ip: str
    claim: Path

    @property
    def rounds(self) -> int:
        return self.cfg.federation.training.rounds

    def server(self) -> Any:
        (server,) = self.play.container(self.cfg.deployment.server.name)
        return server

    def clients(self) -> list[Any]:
        return self.play.container(self.cfg.deployment.clients.name)

    def run_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.claim / "run.json").read_text())
        except (OSError, ValueError):
            return {}

    def finished(self) -> bool:
        return bool(self.run_state().get("finished"))

    def round_reached(self, n: int) -> bool:
        return len(records(self.claim)) >= n

    def metric(self, name: str) -> float:
        return metric(f"{self.server_ip}:{self.cfg.federation.server.metrics_port}", name)


@pytest.fixture
def deploy(image: str, tmp_path: Path) -> Iterator[Any]:
    plays: list[Any] = []

    def start(stack: str, deployment: dict[str, Any], federation: dict[str, Any],
              secrets: dict[str, str] | None = None) -> Deployed:
        overrides = stack_overrides(stack, deployment, federation)
        cfg = parse(overrides["tff-k8s:deployment"], overrides["tff-k8s:federation"])
        manifests = rendered(stack, overrides, secrets)
        subnet = free_subnet()
        server_ip = str(subnet.network_address + 10)
        d = cfg.deployment
        work = tmp_path / f"play-{len(plays)}"
        work.mkdir()
        transformed = for_podman(manifests, image=image, files=PodmanFiles(work), uid=d.run_as_user,
                                 aliases={cfg.server_address.rpartition(":")[0]: server_ip}, first_pod=d.server.name)
        context = played(transformed, work, subnet, server_ip)
        play = context.__enter__()
        plays.append(context)
        claim = work / "claims" / f"{d.server.name}-checkpoints"
        return Deployed(cfg, play, server_ip, claim)

    try:
        yield start
    finally:
        for context in reversed(plays):
            context.__exit__(None, None, None)


DEV_FEDERATION = {"training": {"rounds": 15}}


def test_dev_stack_trains_and_stays_finished_without_restarts(deploy: Any, faults: Any) -> None:
    fed = deploy("dev", {}, DEV_FEDERATION)
    wait_for("every client joined (ready)", lambda: len(fed.clients()) == 3 and all(
        health(f"{c.ip}:{fed.cfg.federation.client.health_port}", READY) == "SERVING" for c in fed.clients()),
        START_S, fed.play)
    server_health = f"{fed.server_ip}:{fed.cfg.federation.server.health_port}"
    assert health(server_health, LIVE) == health(server_health, READY) == "SERVING"
    wait_for("training finished", fed.finished, 600, fed.play)
    done = records(fed.claim)
    assert [r["round"] for r in done] == list(range(1, fed.rounds + 1))
    assert done[-1]["eval_accuracy"] >= ACCURACY, done[-1]
    assert (fed.claim / "model.keras").stat().st_size > 0

    # Finished: nothing exits, nothing restarts, everything stays ready, no round is added.
    time.sleep(FINISHED_QUIET_S)
    for c in [fed.server(), *fed.clients()]:
        assert c.state["Status"] == "running" and c.restarts == 0, (c.name, c.state, fed.play.logs(c.name))
    assert health(server_health, READY) == "SERVING"
    for c in fed.clients():
        assert health(f"{c.ip}:{fed.cfg.federation.client.health_port}", READY) == "SERVING", c.name
    assert fed.metric("tff_k8s_training_finished") == 1
    assert len(records(fed.claim)) == fed.rounds
    assert fed.run_state()["run_id"] == fed.cfg.federation.run_id

    # The containers run as rendered: non-root, read-only root filesystem, no capabilities.
    server = fed.server()
    inspected = json.loads(os.popen(f"podman inspect {server.name}").read())[0]
    assert inspected["Config"]["User"].split(":")[0] == str(fed.cfg.deployment.run_as_user)
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert not inspected["EffectiveCaps"], inspected["EffectiveCaps"]
    faults.record("containers", "training finishes (dev stack, 3 clients)",
                  f"played the dev stack's manifests with podman for {fed.rounds} rounds, then watched {FINISHED_QUIET_S} s",
                  "no restarts; server and clients stay up and ready; accuracy >= 0.90",
                  f"0 restarts, all ready, finished gauge 1, accuracy {done[-1]['eval_accuracy']:.3f}")


def test_killed_client_and_server_containers_do_not_stop_training(deploy: Any, faults: Any) -> None:
    fed = deploy("dev", {}, {"training": {"rounds": 80, "round_deadline_s": 20}})
    server, victim = fed.server(), fed.clients()[0]  # looked up first: podman inspect is slow under load
    wait_for("round 3", lambda: fed.round_reached(3), START_S + 120, fed.play, poll=0.2)
    with fed.play.paused(server.name):
        at_client_kill = len(records(fed.claim))
        os.kill(victim.state["Pid"], 9)  # the container's init, as an OOM kill would
    assert at_client_kill <= fed.rounds - 5, f"round {at_client_kill} of {fed.rounds}: the kill came too late"
    wait_for("the killed client restarted", lambda: next(
        c for c in fed.clients() if c.name == victim.name).restarts >= 1, 120, fed.play)
    wait_for("training past the client kill", lambda: fed.round_reached(at_client_kill + 3), 300, fed.play,
             poll=0.2)
    run_started = fed.run_state()["started_at"]
    with fed.play.paused(server.name):
        at_server_kill = len(records(fed.claim))
        os.kill(server.state["Pid"], 9)
    assert at_server_kill <= fed.rounds - 3, f"round {at_server_kill} of {fed.rounds}: the kill came too late"
    wait_for("the server restarted", lambda: fed.server().restarts >= 1, 120, fed.play)
    wait_for("training finished", fed.finished, 900, fed.play)
    done = records(fed.claim)
    assert [r["round"] for r in done] == list(range(1, fed.rounds + 1)), "every round applied exactly once"
    assert done[-1]["eval_accuracy"] >= ACCURACY, done[-1]
    assert fed.run_state()["started_at"] == run_started, "the restarted server resumed the run on its volume"
    faults.record("containers", "client container killed (SIGKILL to its init) mid-training",
                  f"killed the first client Pod's container at round {at_client_kill} of {fed.rounds}",
                  "restarted by its restart policy; training goes on and completes",
                  f"restarted; all {fed.rounds} rounds applied once; accuracy {done[-1]['eval_accuracy']:.3f}")
    faults.record("containers", "server container killed (SIGKILL to its init) mid-training",
                  f"killed the server at round {at_server_kill} of {fed.rounds}",
                  "restarted; resumes from its volume; every round applied once",
                  f"restarted, resumed from checkpoint; rounds 1..{fed.rounds} each once")


def test_prod_shaped_stack_with_tls_and_token_completes(deploy: Any, tmp_path: Path, faults: Any) -> None:
    raw = stack_config("prod")
    d = raw["tff-k8s:deployment"]
    service_dns = f"{d.get('server', {}).get('name', 'tff-server')}.{d['namespace']}.svc"
    pki = make_pki(tmp_path / "pki", server_names=(service_dns,))
    secrets = {"tff-k8s:authToken": "e2e-" + os.urandom(16).hex(), "tff-k8s:tlsCaCert": pki.ca.read_text(),
               "tff-k8s:tlsServerCert": pki.server_cert.read_text(),
               "tff-k8s:tlsServerKey": pki.server_key.read_text()}
    small = {"requests": {"cpu": "250m", "memory": "768Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
    fed = deploy(
        "prod",
        {"server": {"resources": small}, "clients": {"replicas": 3, "resources": small}},
        {"training": {"rounds": 4, "min_clients": 3, "clients_per_round": 3, "min_results": 3}},
        secrets,
    )
    assert fed.cfg.federation.security.tls and fed.cfg.federation.security.token_file
    wait_for("training finished", fed.finished, START_S + 600, fed.play)
    assert [r["round"] for r in records(fed.claim)] == [1, 2, 3, 4]
    # The kubelet's prober dials plaintext: every probe port answers although the server port is TLS.
    assert health(f"{fed.server_ip}:{fed.cfg.federation.server.health_port}", READY) == "SERVING"
    assert health(f"{fed.server_ip}:{fed.cfg.federation.server.port}", LIVE) == "UNAVAILABLE", "TLS port"
    for c in fed.clients():
        assert health(f"{c.ip}:{fed.cfg.federation.client.health_port}", READY) == "SERVING", c.name
    for c in [fed.server(), *fed.clients()]:
        assert c.restarts == 0, (c.name, fed.play.logs(c.name))
    faults.record("containers", "prod-shaped stack: TLS and client token from Kubernetes Secrets",
                  "played the prod stack's manifests (3 clients, robust aggregator) with test certificates",
                  "completes; plaintext probes answer on the health ports",
                  "4 rounds applied, health SERVING on every probe port, TLS port refuses plaintext, 0 restarts")
