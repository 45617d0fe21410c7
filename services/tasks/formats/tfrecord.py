"""``format: tfrecord``: every ``.tfrecord`` file in the folder, each record a ``tf.train.Example``
with a float-list input feature (``feature``, reshaped to the model's input shape) and an
int64- or float-list label (``label``). Parsed with a fixed feature spec: nothing else in a record
is read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from services.common.data import Arrays
from services.tasks.formats.checks import InputSpec, check_arrays
from services.tasks.formats.files import concatenate, files_in
from services.tasks.spec import DataFormat, TaskError


def read(folder: Path, fmt: DataFormat, spec: InputSpec) -> Arrays:
    if any(d is None for d in spec.shape):
        raise TaskError(f"{folder}: tfrecord needs a model input of fixed shape, the model's is {spec.describe()}")
    shape = tuple(int(d) for d in spec.shape if d is not None)
    size = int(np.prod(shape, dtype=np.int64))
    label_size = int(np.prod(spec.label.shape, dtype=np.int64))
    x_dtype = tf.float32 if np.dtype(spec.dtype).kind == "f" else tf.int64
    y_dtype = tf.float32 if np.dtype(spec.label.dtype).kind == "f" else tf.int64
    features = {fmt.feature: tf.io.FixedLenFeature([size], x_dtype),
                fmt.label: tf.io.FixedLenFeature([label_size], y_dtype)}
    parts = []
    for f in files_in(folder, fmt, (".tfrecord", ".tfrec")):
        xs, ys = [], []
        try:
            for record in tf.data.TFRecordDataset(str(f)):
                example = tf.io.parse_single_example(record, features)
                xs.append(example[fmt.feature].numpy().reshape(shape))
                ys.append(example[fmt.label].numpy().reshape(spec.label.shape))
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as exc:
            raise TaskError(f"{f}: a record does not hold feature {fmt.feature!r} ({size} values) and label "
                            f"{fmt.label!r} ({label_size}) ({exc.message.splitlines()[0]})") from None
        if not xs:
            raise TaskError(f"{f}: no records")
        parts.append(check_arrays(Arrays(np.stack(xs), np.stack(ys)), spec, str(f)))
    return concatenate(parts)
