"""``format: snapshot``: a ``tf.data.Dataset.save`` snapshot (the folder itself), whose elements are
``(x, y)`` pairs of one example each. Its element spec is checked before any element is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from services.common.data import Arrays
from services.tasks.formats.checks import InputSpec, check_arrays
from services.tasks.spec import DataFormat, TaskError


def read(folder: Path, fmt: DataFormat, spec: InputSpec) -> Arrays:
    del fmt
    try:
        ds = tf.data.Dataset.load(str(folder))
    except (tf.errors.NotFoundError, tf.errors.InvalidArgumentError, ValueError) as exc:
        raise TaskError(f"{folder}: not a tf.data snapshot (tf.data.Dataset.save) ({exc})") from None
    element = ds.element_spec
    if not (isinstance(element, tuple) and len(element) == 2
            and all(isinstance(e, tf.TensorSpec) for e in element)):
        raise TaskError(f"{folder}: snapshot elements must be (x, y) tensor pairs, found {element}")
    xs, ys = [], []
    for x, y in ds:
        xs.append(x.numpy())
        ys.append(y.numpy())
    if not xs:
        raise TaskError(f"{folder}: the snapshot holds no examples")
    return check_arrays(Arrays(np.stack(xs), np.stack(ys)), spec, str(folder))
