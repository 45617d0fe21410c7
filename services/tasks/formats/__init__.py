"""Client data formats (docs/tasks.md): one reader per format, each reading one folder of the
task's data (a shard, a silo's data, an eval split) into arrays checked file by file against the
task's input spec. npz, CSV and image folders need NumPy only (images: TensorFlow's PNG/JPEG
decoder); TFRecord and ``tf.data`` snapshots need TensorFlow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.common.data import Arrays
from services.tasks.formats import csv_files, images, npz, snapshot, tfrecord
from services.tasks.formats.checks import InputSpec
from services.tasks.spec import DataFormat, TaskError

Reader = Callable[[Path, DataFormat, InputSpec], Arrays]
READERS: dict[str, Reader] = {"npz": npz.read, "csv": csv_files.read, "images": images.read,
                              "tfrecord": tfrecord.read, "snapshot": snapshot.read}


def read_folder(folder: Path, fmt: DataFormat, spec: InputSpec) -> Arrays:
    if not folder.is_dir():
        raise TaskError(f"{folder}: no such data folder")
    return READERS[fmt.format](folder, fmt, spec)
