"""``task``, ``model``, ``data`` and ``evaluation``: what is learned (the learning task,
services/tasks/), from which data each client reads, and how the global model is evaluated."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from services.common.config.base import Strict

BUILTIN_TASKS = ("digits",)


class TaskSettings(Strict):
    source: str = Field(
        "digits", min_length=1,
        description="The learning task (docs/tasks.md): 'digits' (the bundled digits MLP), a task file "
        "(a .yaml/.yml path: a Keras architecture, loss, metrics and data format, no code) or "
        "'module:<package.module>' (a Python module in the image or on PYTHONPATH).",
    )

    digest: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of a task file's content, set by whoever ships the file (the Pulumi program, "
        "with the task's ConfigMap): part of the run's identity, so a new model starts a new run.",
    )

    @model_validator(mode="after")
    def _known_kind(self) -> TaskSettings:
        s = self.source
        if s in BUILTIN_TASKS or s.endswith((".yaml", ".yml")):
            return self
        if s.startswith("module:"):
            name = s.removeprefix("module:")
            if name and all(part.isidentifier() for part in name.split(".")):
                return self
            raise ValueError(f"source {s!r}: module:<package.module> needs a dotted Python module name")
        raise ValueError(f"source {s!r} is not a task: use one of {', '.join(BUILTIN_TASKS)}, a task file "
                         "(.yaml/.yml) or module:<package.module>")

    @property
    def kind(self) -> Literal["builtin", "file", "module"]:
        if self.source in BUILTIN_TASKS:
            return "builtin"
        return "module" if self.source.startswith("module:") else "file"


class ModelSettings(Strict):
    hidden_units: int = Field(
        32, ge=1, le=10_000_000,
        description="The digits task's MLP: width of its hidden layer (about 300 bytes per unit).",
    )


class DataSettings(Strict):
    source: Literal["digits", "npz", "files"] = Field(
        "digits", description="digits: scikit-learn's bundled digits, sharded by the server (the digits task); "
        "npz: the digits task's own .npz files in npz_dir; files: the task's data format read from data.path.",
    )
    partition: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: float = Field(0.5, gt=0, description="Label skew for partition=dirichlet (smaller = more skew).")
    num_shards: int | None = Field(
        None, ge=1, description="Shards the data is cut into (default: training.min_clients): digits' training "
        "split, or the shard folders under data.path when data.sharded.",
    )
    eval_fraction: float = Field(
        0.2, gt=0, lt=1, description="digits: the held-out share the server evaluates on; files: the share of "
        "each client's own data held out for federated evaluation (unless data.eval_path is set).",
    )
    npz_dir: str | None = Field(
        None, description="Client data: a directory of .npz files with arrays x (N,64) in [0,1] and y (N,)."
    )
    path: str | None = Field(
        None, description="source files: the client data, in the task's format. With data.sharded, a folder "
        "holding one sub-folder per shard (shard-0, shard-1, ...; the server assigns a shard at join); "
        "otherwise this client's own data (cross-silo: the silo's volume).",
    )
    sharded: bool = Field(True, description="source files: data.path holds one sub-folder per shard.")
    eval_path: str | None = Field(
        None, description="source files: the client's own evaluation data (same format), instead of holding out "
        "data.eval_fraction of its training data.",
    )
    server_eval_path: str | None = Field(
        None, description="Held-out data the server evaluates each round's model on (the task's format); "
        "without it (and for tasks other than digits) evaluation is federated only.",
    )
    max_examples: int = Field(
        10_000_000, ge=1, description="A client refuses to start with more examples than this (they are held in "
                                      "memory).",
    )

    @model_validator(mode="after")
    def _source_needs_path(self) -> DataSettings:
        if self.source == "npz" and not self.npz_dir:
            raise ValueError("source 'npz' needs data.npz_dir (the directory of the client's .npz files)")
        if self.source == "files" and not self.path:
            raise ValueError("source 'files' needs data.path (the client data, in the task's format)")
        return self


class EvaluationSettings(Strict):
    every: int = Field(
        1, ge=0, description="Federated evaluation every this many rounds: the sampled clients evaluate the "
        "round's global model on their own eval split before training (0: never).",
    )
