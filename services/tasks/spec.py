"""A declarative task file (YAML), as data: the Keras architecture it names, the loss and metrics
by Keras name, the label and the data format. pydantic and PyYAML only (no TensorFlow): a task file
is checked whole before anything is built from it. docs/tasks.md describes every key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from services.common.config import Strict, format_errors


class TaskError(ValueError):
    """A task, or a client's data, that cannot be used. The message names the file and the key."""


# Keras loss and metric names a task file may use, each with the one Keras class it builds
# (services/tasks/declarative.py maps them; nothing else is looked up by name).
LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
          "mean_squared_error", "mean_absolute_error", "huber")
METRICS = ("accuracy", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy",
           "mean_absolute_error", "mean_squared_error", "precision", "recall")
DTYPES = ("float32", "float64", "int32", "int64", "uint8")


class Loss(Strict):
    name: Literal[LOSSES]  # type: ignore[valid-type]
    from_logits: bool = Field(False, description="The model outputs logits (crossentropy losses).")


class Label(Strict):
    dtype: Literal["int32", "int64", "float32"] = "int32"
    shape: tuple[int, ...] = Field((), strict=False, description="One example's label shape ([] for a class id).")
    classes: int | None = Field(None, ge=2, description="Class ids are 0..classes-1 (classification).")


class DataFormat(Strict):
    format: Literal["npz", "csv", "images", "tfrecord", "snapshot"]
    # npz
    x: str = Field("x", description="npz: the array of inputs.")
    y: str = Field("y", description="npz: the array of labels.")
    # csv (and tfrecord: the feature names to read)
    features: tuple[str, ...] = Field((), strict=False, description="csv: the input columns, in order "
                                      "(default: every column but the label).")
    label: str = Field("label", description="csv / tfrecord: the label column or feature.")
    delimiter: str = Field(",", min_length=1, max_length=1)
    # images
    class_names: tuple[str, ...] = Field((), strict=False, description="images: the class folders in "
                                         "label order (default: the folders found, sorted).")
    channels: Literal[1, 3] = Field(1, description="images: 1 (grayscale) or 3 (RGB).")
    scale: float = Field(1 / 255, gt=0, description="images: pixel values are multiplied by this.")
    # tfrecord
    feature: str = Field("x", description="tfrecord: the input feature of each tf.train.Example (float list).")
    pattern: str = Field("*", description="Which files in a data folder to read (glob).")


class ModelSource(Strict):
    config: str | None = Field(None, description="A Keras model config as JSON (model.to_json()), relative "
                               "to the task file.")
    keras: str | None = Field(None, description="A .keras file (architecture and initial weights).")

    @model_validator(mode="after")
    def _one(self) -> ModelSource:
        if (self.config is None) == (self.keras is None):
            raise ValueError("give exactly one of model.config (a JSON model config) and model.keras (a .keras file)")
        return self


class TaskFile(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="The task's name (logs, exports).")
    model: ModelSource
    loss: Loss
    metrics: tuple[Literal[METRICS], ...] = Field((), strict=False)  # type: ignore[valid-type]
    label: Label = Label()
    data: DataFormat

    @model_validator(mode="before")
    @classmethod
    def _loss_by_name(cls, values: Any) -> Any:
        if isinstance(values, dict) and isinstance(values.get("loss"), str):
            values = {**values, "loss": {"name": values["loss"]}}
        return values


def read_task_file(path: str | Path) -> tuple[TaskFile, Path]:
    """The task file at ``path`` and the folder its relative paths are relative to."""
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TaskError(f"task file {path}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise TaskError(f"task file {path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise TaskError(f"task file {path}: must hold a mapping (name, model, loss, metrics, label, data)")
    try:
        return TaskFile.model_validate(loaded), path.parent
    except ValidationError as err:
        raise TaskError(format_errors(err, what=f"task file {path}", schema="docs/tasks.md")) from None
