"""The one federation config schema, shared by the server, the clients, the local runner and
the Pulumi program. It imports pydantic and PyYAML only: never TensorFlow.

A config comes from (lowest to highest precedence): the defaults below, a YAML file
(``--config PATH`` or ``$TFF_K8S_CONFIG``), the environment (``SERVER_ADDRESS``), and
``--set dotted.key=value`` overrides. Every error names the offending key and says how to fix it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from services.common.aggregators import DEFAULT as DEFAULT_AGGREGATOR
from services.common.aggregators import AggregatorName

CONFIG_ENV = "TFF_K8S_CONFIG"
SERVER_ADDRESS_ENV = "SERVER_ADDRESS"
MiB = 1024 * 1024


class ConfigError(ValueError):
    """Invalid federation config. The message names each bad key and the fix."""


class _Strict(BaseModel):
    # strict: a YAML `yes` is not 1 round and `"8080"` is not a port; ints still fill float fields.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, strict=True)


class ServerSettings(_Strict):
    host: str = Field("0.0.0.0", description="Address the gRPC server binds to.")
    port: int = Field(50051, ge=1, le=65535, description="gRPC port clients dial.")
    metrics_port: int = Field(9090, ge=1, le=65535, description="Prometheus text endpoint port.")
    health_port: int = Field(
        8080, ge=1, le=65535,
        description="Plaintext grpc.health.v1 port for kubelet probes (the kubelet's gRPC prober cannot "
        "speak TLS, and server.port serves TLS in prod). It answers health checks only.",
    )
    output_dir: str = Field(
        "/var/lib/tff-k8s",
        description="Checkpoints, metrics.jsonl and model.keras go here (a persistent volume in k8s).",
    )
    chunk_bytes: int = Field(
        1 * MiB, ge=1024, le=3 * MiB, description="Size of one streamed chunk of a model or update."
    )
    max_payload_bytes: int = Field(
        1024 * MiB, ge=1024, description="Largest model update a client may send, in bytes."
    )
    upload_slots: int = Field(
        2, ge=1, le=64,
        description="Client results the server receives at once. Each is staged whole until it is accepted "
        "(then added to the round's aggregate) or refused (then nothing of it counts); others wait for a slot. "
        "The server holds about (3 + upload_slots) x the model, whatever the number of clients.",
    )
    tff_startup_timeout_s: float = Field(
        120.0, gt=0, description="How long a service may take to start (TensorFlow and TFF load) before its "
        "startup probe fails it.",
    )
    on_finish: Literal["serve", "exit"] = Field(
        "serve",
        description="After the last round: serve (stay up in the finished state: health SERVING, the "
        "tff_k8s_training_finished gauge at 1, every client told DONE; a restart stays finished) or exit "
        "(exit 0, for process supervisors such as the local runner).",
    )

    @model_validator(mode="after")
    def _ports_differ(self) -> ServerSettings:
        ports = {"port": self.port, "metrics_port": self.metrics_port, "health_port": self.health_port}
        if len(set(ports.values())) < len(ports):
            raise ValueError(
                f"server ports must differ, got {ports}: set server.port, server.metrics_port and "
                "server.health_port to three different ports"
            )
        return self


class SecureSettings(_Strict):
    """``training.aggregator: secure``: pairwise-masked secure aggregation (docs/secure-aggregation.md)."""

    threshold: int | None = Field(
        None, ge=2, description="t: shares needed to rebuild a client's mask secrets, and clients that must "
        "survive for a round to complete (default: a strict majority of a neighbourhood, see neighbours).",
    )
    neighbours: int = Field(
        16, ge=2, le=1024, description="k: each client masks with and shares among k neighbours (SecAgg+); "
        "rounds of <= k + 1 clients use the complete graph. Even.",
    )
    bits: int = Field(32, ge=16, le=32, description="Masked inputs are integers mod 2^bits.")
    clip: float = Field(2.0, gt=0, description="Each coordinate of an update is clipped to [-clip, clip].")
    max_weight: int = Field(
        4096, ge=1, description="A client's weight (its example count) is rounded to an integer and capped here.",
    )
    phase_timeout_s: float = Field(
        30.0, gt=0, description="How long each key phase and the unmasking wait for slow or dropped clients.",
    )

    @model_validator(mode="after")
    def _even(self) -> SecureSettings:
        if self.neighbours % 2:
            raise ValueError(f"neighbours ({self.neighbours}) must be even: set training.secure.neighbours")
        return self


class TrainingSettings(_Strict):
    rounds: int = Field(10, ge=1, le=1_000_000, description="Federated rounds to run.")
    min_clients: int = Field(2, ge=1, description="Joined clients needed before a round starts.")
    clients_per_round: int = Field(2, ge=1, description="Clients sampled for each round.")
    min_results: int | None = Field(
        None, ge=1, description="Results needed to apply a round (default: clients_per_round)."
    )
    round_deadline_s: float = Field(120.0, gt=0, description="Seconds a round waits for results.")
    local_epochs: int = Field(2, ge=1, le=1000, description="Passes over local data per round.")
    batch_size: int = Field(20, ge=1, le=100_000, description="Client batch size.")
    client_learning_rate: float = Field(0.1, gt=0, description="Client SGD learning rate.")
    server_optimizer: Literal["sgd", "adam"] = "sgd"
    server_learning_rate: float = Field(1.0, gt=0, description="Server optimizer learning rate.")
    aggregator: AggregatorName = DEFAULT_AGGREGATOR  # the choices: services/common/aggregators.py
    secure: SecureSettings = SecureSettings()
    dp_noise_multiplier: float = Field(0.1, ge=0, description="Noise multiplier for the dp aggregator.")
    dp_clip: float | None = Field(
        None, gt=0, description="dp aggregator: a fixed L2 clip for each client's update (TFF's gaussian_fixed); "
        "null: adaptive clipping towards the median norm (TFF's dp_aggregator, gaussian_adaptive).",
    )
    seed: int = Field(0, ge=0, description="Seeds model init, client sampling and data partitioning.")
    run_id: str | None = Field(
        None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="The run's identity. Default: derived from the training, model and data settings, so "
        "changing any of them starts a new run (the old run's files are kept under <output_dir>/runs/). Set "
        "it to keep one run across such changes, e.g. to extend a run with more rounds.",
    )

    @property
    def required_results(self) -> int:
        return self.min_results if self.min_results is not None else self.clients_per_round

    @model_validator(mode="after")
    def _counts_fit(self) -> TrainingSettings:
        if self.clients_per_round > self.min_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) must be <= min_clients "
                f"({self.min_clients}): lower training.clients_per_round or raise training.min_clients"
            )
        if self.min_results is not None and self.min_results > self.clients_per_round:
            raise ValueError(
                f"min_results ({self.min_results}) must be <= clients_per_round "
                f"({self.clients_per_round}): lower training.min_results"
            )
        if self.aggregator == "secure":
            _check_secure(self)
        nm = self.dp_noise_multiplier
        if self.aggregator == "dp" and self.dp_clip is None and nm > 0 and nm >= 0.1 * self.clients_per_round:
            # TFF's adaptive clipping noises the clipped count with 0.05 x clients_per_round (tff.learning.dp_aggregator)
            raise ValueError(
                f"dp_noise_multiplier {nm} needs clients_per_round > {nm / 0.1:g} with adaptive clipping: raise "
                "training.clients_per_round, lower training.dp_noise_multiplier or set a fixed training.dp_clip"
            )
        return self


def _check_secure(training: TrainingSettings) -> None:
    from services.common.secagg.params import ParamsError, RoundParams, default_threshold

    n, sec = training.clients_per_round, training.secure
    if n < 2:
        raise ValueError(f"the secure aggregator needs clients_per_round >= 2, got {n}: with one client the sum "
                         "is its update; raise training.clients_per_round")
    t = sec.threshold or default_threshold(n, sec.neighbours)
    try:
        RoundParams(n, t, sec.neighbours, sec.bits, sec.clip, sec.max_weight).check()
    except ParamsError as exc:
        raise ValueError(f"training.secure: {exc}") from None


class ModelSettings(_Strict):
    hidden_units: int = Field(
        32, ge=1, le=10_000_000, description="Width of the MLP's hidden layer (about 300 bytes per unit)."
    )


class DataSettings(_Strict):
    source: Literal["digits", "npz"] = Field(
        "digits", description="digits: scikit-learn's bundled digits, sharded by the server; npz: own files."
    )
    partition: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = Field(0.5, gt=0, description="Label skew for partition=dirichlet (smaller = more skew).")
    num_shards: int | None = Field(
        None, ge=1, description="Shards the digits training split is cut into (default: training.min_clients)."
    )
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out share of digits for evaluation.")
    npz_dir: str | None = Field(
        None, description="Client data: a directory of .npz files with arrays x (N,64) in [0,1] and y (N,)."
    )

    @model_validator(mode="after")
    def _npz_needs_dir(self) -> DataSettings:
        if self.source == "npz" and not self.npz_dir:
            raise ValueError("source 'npz' needs data.npz_dir (the directory of the client's .npz files)")
        return self


class SiloIdentity(_Strict):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
                      description="The silo's name (a DNS label), as in the stack's silos list.")
    cert_sha256: str = Field(pattern=r"^[0-9a-f]{64}$",
                             description="SHA-256 of the silo's client certificate (DER), lowercase hex.")


class SecuritySettings(_Strict):
    tls: bool = Field(True, description="TLS on the client -> server link. false is for local runs only.")
    mutual_tls: bool = Field(False, description="Clients present certificates too.")
    ca_file: str = "/etc/tff-k8s/tls/ca.crt"
    cert_file: str = "/etc/tff-k8s/tls/tls.crt"
    key_file: str = "/etc/tff-k8s/tls/tls.key"
    token_file: str | None = Field(
        "/etc/tff-k8s/auth/token", description="Bearer token clients present; null disables auth."
    )
    silos: tuple[SiloIdentity, ...] = Field(
        (), strict=False,  # a YAML list
        description="Cross-silo: the silos whose client certificates the server accepts (mutual TLS), each "
        "by its certificate's SHA-256; empty: any client certificate the CA signed.",
    )

    @model_validator(mode="after")
    def _mtls_needs_tls(self) -> SecuritySettings:
        if self.mutual_tls and not self.tls:
            raise ValueError("mutual_tls needs tls: set security.tls to true or security.mutual_tls to false")
        if self.silos and not self.mutual_tls:
            raise ValueError("security.silos identifies silos by their client certificates: set security.mutual_tls "
                             "to true (and security.tls) or leave security.silos empty")
        for field in ("name", "cert_sha256"):
            seen = [getattr(silo, field) for silo in self.silos]
            dupes = sorted({v for v in seen if seen.count(v) > 1})
            if dupes:
                raise ValueError(f"security.silos: {field} {', '.join(dupes)} appears more than once: each silo has its "
                                 "own name and its own certificate")
        return self


class ClientSettings(_Strict):
    server_address: str = Field(
        "localhost:50051", description="host:port of the server (env SERVER_ADDRESS overrides it)."
    )
    name: str = Field("", description="A label for logs; defaults to the host name.")
    health_port: int = Field(8081, ge=0, le=65535, description="gRPC health port for probes (0: off).")
    reconnect_initial_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(10.0, gt=0)
    give_up_after_s: float = Field(600.0, gt=0, description="Exit non-zero after this long without a server.")
    on_done: Literal["idle", "exit"] = Field(
        "idle",
        description="When the server says training is done: idle (stay up and Ready until stopped, as a "
        "Deployment's Pod must) or exit (exit 0, for process supervisors such as the local runner).",
    )
    tf_threads: int = Field(
        0, ge=0, le=256,
        description="TensorFlow's intra- and inter-op threads in a client process; 0: the CPUs the container "
        "may use (its cgroup CPU limit, else the CPUs it may run on).",
    )

    @model_validator(mode="after")
    def _address_has_port(self) -> ClientSettings:
        host, sep, port = self.server_address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(
                f"server_address {self.server_address!r} must be host:port (e.g. tff-server.tff.svc:50051)"
            )
        return self


class FederationConfig(_Strict):
    server: ServerSettings = ServerSettings()
    training: TrainingSettings = TrainingSettings()
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    security: SecuritySettings = SecuritySettings()
    client: ClientSettings = ClientSettings()

    @property
    def num_shards(self) -> int:
        return self.data.num_shards or self.training.min_clients

    @property
    def run_id(self) -> str:
        """The run this config trains: ``training.run_id`` when set, else ``run-`` and a hash of the
        training, model and data sections (ports, TLS, the server's and clients' operational settings
        are not part of it: changing them goes on with the same run)."""
        if self.training.run_id:
            return self.training.run_id
        defining = {"training": self.training.model_dump(mode="json", exclude={"run_id"}),
                    "model": self.model.model_dump(mode="json"), "data": self.data.model_dump(mode="json")}
        return "run-" + hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        """Deterministic YAML, loadable by :func:`load_config` (what the ConfigMap carries)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling against services/common/config.py)"
        lines.append(f"{key}: {msg}")
    return "invalid federation config:\n  " + "\n  ".join(lines)


def from_mapping(data: Mapping[str, Any] | None) -> FederationConfig:
    try:
        return FederationConfig.model_validate(dict(data or {}))
    except ValidationError as err:
        raise ConfigError(_format_errors(err)) from None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> FederationConfig:
    """Defaults <- YAML file <- environment <- overrides, validated once at the end."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: must hold a mapping of sections, not {type(loaded).__name__}")
        data = loaded or {}
    merged = dict(data)
    if environ.get(SERVER_ADDRESS_ENV):
        merged.setdefault("client", {})
        if not isinstance(merged["client"], dict):
            raise ConfigError("client: must be a mapping")
        merged["client"] = {**merged["client"], "server_address": environ[SERVER_ADDRESS_ENV]}
    for key, value in (overrides or {}).items():
        _set_dotted_creating(merged, key, value)
    return from_mapping(merged)


def _set_dotted_creating(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[parts[-1]] = value


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["training.rounds=3", ...]`` -> ``{"training.rounds": 3}``; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value (e.g. training.rounds=3)")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key.strip()}: value {raw!r} is not a YAML scalar ({exc.problem})") from None
    return out


def entrypoint_parser(role: str) -> argparse.ArgumentParser:
    """The command line both containers use: ``python -m services.<role> [--config F] [--set k=v ...]``."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{role}", description=f"tff-k8s federation {role}")
    parser.add_argument("--config", help=f"YAML federation config (default: ${CONFIG_ENV})")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set training.rounds=3 (repeatable)",
    )
    return parser


def config_from_argv(role: str, argv: Sequence[str], environ: Mapping[str, str] | None = None) -> FederationConfig:
    """Parse a container's args + env into a config exactly as the entrypoint does (used by contract tests)."""
    args = entrypoint_parser(role).parse_args(list(argv))
    return load_config(args.config, overrides=parse_set(args.overrides), environ=environ)
