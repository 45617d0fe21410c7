"""Every example a client reads is checked against the task's input spec and label before it
trains: shape, dtype, finiteness, label range, no empty data. A failure names the file (or folder),
the feature and expected vs found. NumPy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.data import Arrays
from services.tasks.spec import Label, TaskError


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int | None, ...]  # one example's input, without the batch (None: any size)
    dtype: str  # float32, int32, ...
    label: Label

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"(N, {dims}) {self.dtype}" if dims else f"(N,) {self.dtype}"


def check_arrays(arrays: Arrays, spec: InputSpec, where: str) -> Arrays:
    """``arrays`` in the spec's dtypes, or :class:`TaskError` saying what does not fit."""
    x, y = np.asarray(arrays.x), np.asarray(arrays.y)
    if x.ndim == 0 or len(x) == 0:
        raise TaskError(f"{where}: no examples (an empty shard cannot train)")
    if len(y) != len(x):
        raise TaskError(f"{where}: {len(x)} inputs but {len(y)} labels")
    found = x.shape[1:]
    if len(found) != len(spec.shape) or any(e is not None and e != f for e, f in zip(spec.shape, found, strict=True)):
        raise TaskError(f"{where}: input x: expected {spec.describe()}, found {x.shape} {x.dtype}")
    want = np.dtype(spec.dtype)
    if want.kind == "f":
        x = _floats(x, want, where, "input x")
    elif x.dtype.kind in "iu":
        x = _integers(x, want, where, "input x")
    else:
        raise TaskError(f"{where}: input x: expected integers ({spec.dtype}), found {x.dtype}")
    return Arrays(x, _labels(y, spec.label, where))


def _labels(y: np.ndarray, label: Label, where: str) -> np.ndarray:
    if y.shape[1:] != tuple(label.shape):
        raise TaskError(f"{where}: label y: expected shape (N, {', '.join(map(str, label.shape))}) "
                        f"found {y.shape}".replace("(N, )", "(N,)"))
    want = np.dtype(label.dtype)
    if want.kind == "f":
        return _floats(y, want, where, "label y")
    if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        y = y.astype(np.int64)  # CSV readers give whole numbers as floats
    if y.dtype.kind not in "iu":
        raise TaskError(f"{where}: label y: expected integer class ids ({label.dtype}), found {y.dtype}")
    y = _integers(y, want, where, "label y")
    if label.classes is not None and len(y) and (y.min() < 0 or y.max() >= label.classes):
        raise TaskError(f"{where}: label y: class ids must be in 0..{label.classes - 1}, found "
                        f"{int(y.min())}..{int(y.max())}")
    return y


def _floats(a: np.ndarray, want: np.dtype, where: str, what: str) -> np.ndarray:
    if a.dtype.kind not in "iuf":
        raise TaskError(f"{where}: {what}: expected numbers ({want}), found {a.dtype}")
    a = a.astype(want, copy=False)
    if not np.all(np.isfinite(a)):
        raise TaskError(f"{where}: {what}: holds NaN or infinite values")
    return a


def _integers(a: np.ndarray, want: np.dtype, where: str, what: str) -> np.ndarray:
    info = np.iinfo(want)
    if len(a) and (a.min() < info.min or a.max() > info.max):
        raise TaskError(f"{where}: {what}: values outside {want} ({int(a.min())}..{int(a.max())})")
    return a.astype(want, copy=False)
