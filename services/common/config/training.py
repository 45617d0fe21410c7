"""``training``: rounds, client counts, the algorithm and its optimizers, the aggregator and its
parameters (secure aggregation's, DP's), the seed and the run's name."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.aggregators import DEFAULT as DEFAULT_AGGREGATOR
from services.common.aggregators import AggregatorName
from services.common.config.base import Strict


class SecureSettings(Strict):
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


class TrainingSettings(Strict):
    rounds: int = Field(10, ge=1, le=1_000_000, description="Federated rounds to run.")
    min_clients: int = Field(2, ge=1, description="Joined clients needed before a round starts.")
    clients_per_round: int = Field(2, ge=1, description="Clients sampled for each round.")
    min_results: int | None = Field(
        None, ge=1, description="Results needed to apply a round (default: clients_per_round)."
    )
    round_deadline_s: float = Field(120.0, gt=0, description="Seconds a round waits for results.")
    local_epochs: int = Field(2, ge=1, le=1000, description="Passes over local data per round.")
    batch_size: int = Field(20, ge=1, le=100_000, description="Client batch size.")
    algorithm: Literal["fedavg", "fedprox"] = Field(
        "fedavg", description="fedavg: TFF's model-delta client work; fedprox: TFF's proximal client work "
        "(build_weighted_fed_prox), which pulls each client's weights towards the global model by proximal_mu.",
    )
    proximal_mu: float = Field(0.01, ge=0, description="fedprox: the proximal strength mu (0 is FedAvg).")
    client_optimizer: Literal["sgd", "adam"] = Field(
        "sgd", description="Client optimizer (tff.learning.optimizers): sgd (with client_momentum) or adam.",
    )
    client_learning_rate: float = Field(0.1, gt=0, description="Client optimizer learning rate.")
    client_momentum: float = Field(0.0, ge=0, lt=1, description="Client sgd momentum (0: plain SGD).")
    server_optimizer: Literal["sgd", "adam", "yogi", "adagrad"] = Field(
        "sgd", description="Server optimizer (tff.learning.optimizers): sgd (with server_momentum), adam, yogi "
        "or adagrad; applied to the aggregated update as TFF's apply-optimizer finalizer does.",
    )
    server_learning_rate: float = Field(1.0, gt=0, description="Server optimizer learning rate.")
    server_momentum: float = Field(0.0, ge=0, lt=1, description="Server sgd momentum (0: plain SGD).")
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


