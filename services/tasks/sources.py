"""Where each side's data comes from (``data.*`` in the federation config): a client's training
data and eval split, and the server's held-out data. A client reads only its own: its shard folder
(assigned by the server at join), or its own data (cross-silo: the silo's volume)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.config import FederationConfig
from services.common.data import Arrays, digits_shard, load_digits_split, load_npz_dir
from services.tasks.federated import FederatedTask
from services.tasks.spec import TaskError

SHARD_FOLDER = "shard-{index}"


@dataclass(frozen=True)
class ClientData:
    train: Arrays
    eval: Arrays | None  # for federated evaluation; None: this client does not evaluate


def shard_folder(root: Path, index: int) -> Path:
    return root / SHARD_FOLDER.format(index=index)


def client_data(cfg: FederationConfig, task: FederatedTask, shard_index: int, num_shards: int) -> ClientData:
    d = cfg.data
    if d.source == "digits":
        return ClientData(digits_shard(shard_index, num_shards, scheme=d.partition, alpha=d.dirichlet_alpha,
                                       eval_fraction=d.eval_fraction, seed=cfg.training.seed), None)
    if d.source == "npz":
        assert d.npz_dir is not None
        return ClientData(load_npz_dir(d.npz_dir), None)
    assert d.path is not None
    root = Path(d.path)
    folder = _own_folder(root, d.sharded, shard_index, num_shards)
    train = _limited(task.learning.load(folder, task.input_spec), d.max_examples, folder)
    if d.eval_path:
        eval_root = Path(d.eval_path)
        eval_folder = shard_folder(eval_root, shard_index) if d.sharded and shard_folder(eval_root, shard_index).is_dir() \
            else eval_root
        return ClientData(train, task.learning.load(eval_folder, task.input_spec))
    return split(train, d.eval_fraction, seed=cfg.training.seed + shard_index, where=str(folder))


def _own_folder(root: Path, sharded: bool, index: int, num_shards: int) -> Path:
    if not sharded:
        return root
    folder = shard_folder(root, index)
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise TaskError(f"{folder}: no such shard folder (data.path {root} must hold shard-0 .. "
                        f"shard-{num_shards - 1}; found {', '.join(found) or 'nothing'}); or set data.sharded "
                        "to false if data.path is this client's own data")
    return folder


def _limited(arrays: Arrays, limit: int, folder: Path) -> Arrays:
    if len(arrays) > limit:
        raise TaskError(f"{folder}: {len(arrays)} examples, more than data.max_examples ({limit})")
    return arrays


def split(arrays: Arrays, eval_fraction: float, *, seed: int, where: str) -> ClientData:
    """Hold out ``eval_fraction`` of a client's examples (at least one, shuffled with ``seed``) for
    federated evaluation; the rest trains."""
    n = len(arrays)
    if n < 2:
        raise TaskError(f"{where}: {n} example(s): a client needs at least 2 to train and evaluate "
                        "(or set data.eval_path)")
    n_eval = min(n - 1, max(1, int(round(n * eval_fraction))))
    order = np.random.default_rng(seed).permutation(n)
    ev, tr = order[:n_eval], order[n_eval:]
    return ClientData(Arrays(arrays.x[tr], arrays.y[tr]), Arrays(arrays.x[ev], arrays.y[ev]))


def server_eval_data(cfg: FederationConfig, task: FederatedTask) -> Arrays | None:
    """The held-out data the server evaluates each round's model on: the digits' held-out split
    (bundled digits), ``data.server_eval_path`` when set, else none (evaluation is federated)."""
    if cfg.data.server_eval_path:
        return task.learning.load(Path(cfg.data.server_eval_path), task.input_spec)
    if cfg.data.source == "digits":
        return load_digits_split(cfg.data.eval_fraction, cfg.training.seed)[1]
    return None
