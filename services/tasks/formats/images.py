"""``format: images``: one sub-folder per class (``class_names`` in label order, default the
folders found, sorted), PNG or JPEG files in each, decoded with TensorFlow's decoders (never
PIL's plug-ins) to ``channels`` and scaled by ``scale``. Every image must have the model's input
shape: nothing is resized silently."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from services.common.data import Arrays
from services.tasks.formats.checks import InputSpec, check_arrays
from services.tasks.formats.files import files_in
from services.tasks.spec import DataFormat, TaskError

SUFFIXES = (".png", ".jpg", ".jpeg")


def read(folder: Path, fmt: DataFormat, spec: InputSpec) -> Arrays:
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    names = list(fmt.class_names) or found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise TaskError(f"{folder}: class folder(s) {', '.join(unknown)} are not in data.class_names")
    if spec.label.classes is not None and len(names) > spec.label.classes:
        raise TaskError(f"{folder}: {len(names)} classes but label.classes is {spec.label.classes}")
    xs, ys = [], []
    for index, name in enumerate(names):
        if not (folder / name).is_dir():
            continue  # a class this client has no examples of
        for f in files_in(folder / name, fmt, SUFFIXES):
            try:
                image = tf.io.decode_image(tf.io.read_file(str(f)), channels=fmt.channels, expand_animations=False)
            except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
                raise TaskError(f"{f}: not a readable PNG/JPEG image ({exc.message.splitlines()[0]})") from None
            pixels = image.numpy().astype(np.float32) * np.float32(fmt.scale)
            if spec.shape != pixels.shape:
                raise TaskError(f"{f}: image is {pixels.shape}, the model's input is {spec.describe()}")
            xs.append(pixels)
            ys.append(index)
    if not xs:
        raise TaskError(f"{folder}: no images in any class folder ({', '.join(names) or 'none found'})")
    return check_arrays(Arrays(np.stack(xs), np.asarray(ys, dtype=np.int64)), spec, str(folder))
