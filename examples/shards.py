"""What the examples' data scripts share: a split of n examples into client shards, written as
``<out>/shard-<i>/`` folders (the layout ``data.sharded`` reads), plus a held-out folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def shard_indices(n: int, shards: int, *, seed: int, held_out: float) -> tuple[list[np.ndarray], np.ndarray]:
    """Indices of each client shard (IID) and of the held-out examples."""
    order = np.random.default_rng(seed).permutation(n)
    n_held = int(round(n * held_out))
    return [np.sort(s) for s in np.array_split(order[n_held:], shards)], np.sort(order[:n_held])


def fresh_folders(out: Path, shards: int) -> Iterator[tuple[str, Path]]:
    """``out`` emptied, then (name, folder) for each shard and for ``held-out``."""
    if out.exists():
        shutil.rmtree(out)
    for name in [f"shard-{i}" for i in range(shards)] + ["held-out"]:
        folder = out / name
        folder.mkdir(parents=True)
        yield name, folder
