"""Client data: the bundled scikit-learn digits (no downloads), split into a held-out evaluation
set and client shards (IID or label-skewed Dirichlet), or a client's own ``.npz`` files.
NumPy only: the tasks (the model side, other data formats) live in :mod:`services.tasks`."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NUM_FEATURES = 64  # 8x8 digits, flattened
NUM_CLASSES = 10
PIXEL_MAX = 16.0  # sklearn's digits are integers in [0, 16]


class DataError(ValueError):
    """Client data that cannot be used."""


@dataclass(frozen=True)
class Arrays:
    x: np.ndarray  # float32 (N, 64) in [0, 1]
    y: np.ndarray  # int32 (N,)

    def __len__(self) -> int:
        return len(self.y)


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """Raw digits pixels (0..16) -> the model's input: float32 (N, 64) scaled to [0, 1]."""
    return (np.asarray(pixels, dtype=np.float32) / PIXEL_MAX).reshape(-1, NUM_FEATURES)


def load_digits_split(eval_fraction: float, seed: int) -> tuple[Arrays, Arrays]:
    """The digits, shuffled with ``seed`` and split into (train, held-out eval)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    x = preprocess(digits.data[order])
    y = digits.target[order].astype(np.int32)
    n_eval = max(1, int(round(len(y) * eval_fraction)))
    return Arrays(x[n_eval:], y[n_eval:]), Arrays(x[:n_eval], y[:n_eval])


def partition(labels: np.ndarray, num_shards: int, *, scheme: str, alpha: float, seed: int) -> list[np.ndarray]:
    """Indices of each shard. ``iid``: a random even split. ``dirichlet``: for each class, the share
    each shard gets is drawn from Dirichlet(alpha), so small alpha means strong label skew.
    Every index lands in exactly one shard and no shard is empty."""
    n = len(labels)
    if num_shards < 1 or num_shards > n:
        raise DataError(f"num_shards must be between 1 and {n}, got {num_shards}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return [np.sort(s) for s in np.array_split(rng.permutation(n), num_shards)]
    if scheme != "dirichlet":
        raise DataError(f"unknown partition scheme {scheme!r} (iid or dirichlet)")
    if alpha <= 0:
        raise DataError(f"dirichlet alpha must be > 0, got {alpha}")
    shards: list[list[int]] = [[] for _ in range(num_shards)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = (np.cumsum(rng.dirichlet([alpha] * num_shards)) * len(idx)).astype(int)[:-1]
        for index, part in enumerate(np.split(idx, cuts)):
            shards[index].extend(part.tolist())
    # No empty shard: a client with no data cannot train. Move one example from the largest.
    for members in shards:
        if not members:
            donor = max(shards, key=len)
            members.append(donor.pop())
    return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]


def digits_shard(shard_index: int, num_shards: int, *, scheme: str, alpha: float, eval_fraction: float,
                 seed: int) -> Arrays:
    if not 0 <= shard_index < num_shards:
        raise DataError(f"shard_index {shard_index} is outside 0..{num_shards - 1}")
    train, _ = load_digits_split(eval_fraction, seed)
    idx = partition(train.y, num_shards, scheme=scheme, alpha=alpha, seed=seed)[shard_index]
    return Arrays(train.x[idx], train.y[idx])


def load_npz_dir(path: str | Path) -> Arrays:
    """A client's own data: every ``*.npz`` in ``path`` with arrays ``x`` (N, 64) in [0, 1] and ``y``
    (N,) integer labels in 0..9. Files load with ``allow_pickle=False``."""
    files = sorted(Path(path).glob("*.npz"))
    if not files:
        raise DataError(f"no .npz files in {path} (data.npz_dir)")
    xs, ys = [], []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as npz:
                if "x" not in npz or "y" not in npz:
                    raise DataError(f"{f}: needs arrays 'x' and 'y', has {sorted(npz.files)}")
                x_raw, y = np.asarray(npz["x"]), np.asarray(npz["y"])
        except DataError:
            raise
        except (OSError, ValueError, TypeError, EOFError, AttributeError, zipfile.BadZipFile) as exc:
            raise DataError(f"{f}: not a readable .npz of numeric arrays ({type(exc).__name__}: {exc})") from None
        if x_raw.ndim < 1 or len(x_raw) == 0 or x_raw.dtype.kind not in "iuf" or y.ndim != 1:
            raise DataError(f"{f}: x must be a non-empty numeric (N, {NUM_FEATURES}) array and y (N,) labels")
        x = x_raw.astype(np.float32).reshape(len(x_raw), -1)
        if x.shape[1] != NUM_FEATURES or len(x) != len(y):
            raise DataError(f"{f}: x must be (N, {NUM_FEATURES}) and y (N,), got {x_raw.shape} and {y.shape}")
        if not np.all(np.isfinite(x)) or x.min(initial=0) < 0 or x.max(initial=0) > 1:
            raise DataError(f"{f}: x must be finite and scaled to [0, 1]")
        if y.dtype.kind not in "iu" or y.min(initial=0) < 0 or y.max(initial=0) >= NUM_CLASSES:
            raise DataError(f"{f}: y must be integer labels in 0..{NUM_CLASSES - 1}")
        xs.append(x)
        ys.append(y.astype(np.int32))
    return Arrays(np.concatenate(xs), np.concatenate(ys))
