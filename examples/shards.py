"""What the examples' data scripts share: a split of n examples into client shards, written as
``<out>/shard-<i>/`` folders (the layout ``data.sharded`` reads), plus a held-out folder."""

from __future__ import annotations

import argparse
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


def parser(doc: str | None, here: Path, *, model: bool) -> argparse.ArgumentParser:
    """An example's prepare command line: --out, --shards, --seed (and --write-model)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=here / "data")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    if model:
        p.add_argument("--write-model", action="store_true", help="write model.json beside this script again")
    return p
