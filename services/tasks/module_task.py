"""A task that is code: a Python module in the image (or on ``PYTHONPATH`` for ``tff-k8s local``),
for models with custom layers or data that needs a loader. The server never sends code and never
receives any: each side imports the module it was deployed with, and the join-time contract check
(services/tasks/contract.py) refuses a client whose module builds another task.

The module exposes (docs/tasks.md):
- ``build_model() -> tf.keras.Model`` and ``loss() -> tf.keras.losses.Loss`` (required);
- ``metrics() -> list[tf.keras.metrics.Metric]`` (optional);
- ``LABEL``: a mapping like a task file's ``label`` (optional: an int32 class id);
- ``DATA``: a mapping like a task file's ``data`` (a built-in format), or
  ``load_data(folder: pathlib.Path) -> (x, y)`` (its own loader; what it returns is checked like any
  format's)."""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import tensorflow as tf
from pydantic import ValidationError

from services.common.config import format_errors
from services.common.data import Arrays
from services.tasks.base import LearningTask
from services.tasks.formats.checks import InputSpec
from services.tasks.spec import DataFormat, Label, TaskError


class ModuleTask(LearningTask):
    def __init__(self, module_name: str) -> None:
        try:
            self.module: ModuleType = importlib.import_module(module_name)
        except ImportError as exc:
            raise TaskError(f"task module {module_name!r} cannot be imported ({exc}): put its package in the "
                            "image (docs/tasks.md) or on PYTHONPATH") from None
        self.name = str(getattr(self.module, "NAME", module_name.rsplit(".", 1)[-1])).replace("_", "-")
        for required in ("build_model", "loss"):
            if not callable(getattr(self.module, required, None)):
                raise TaskError(f"task module {module_name}: needs a function {required}() (docs/tasks.md)")
        self.label = self._spec(Label, "LABEL", Label())
        self.data_format = self._spec(DataFormat, "DATA", None)
        self.loader = getattr(self.module, "load_data", None)
        if self.data_format is None and not callable(self.loader):
            raise TaskError(f"task module {module_name}: needs DATA (a data format) or load_data(folder)")

    def _spec(self, schema: Any, attr: str, default: Any) -> Any:
        value = getattr(self.module, attr, None)
        if value is None:
            return default
        try:
            return schema.model_validate(dict(value))
        except (ValidationError, TypeError, ValueError) as exc:
            detail = format_errors(exc, what=f"{self.module.__name__}.{attr}", schema="docs/tasks.md") \
                if isinstance(exc, ValidationError) else str(exc)
            raise TaskError(detail) from None

    def build_model(self) -> tf.keras.Model:
        model = self.module.build_model()
        if not isinstance(model, tf.keras.Model):
            raise TaskError(f"{self.module.__name__}.build_model() returned {type(model).__name__}, not a Keras model")
        return model

    def loss(self) -> tf.keras.losses.Loss:
        return self.module.loss()

    def metrics(self) -> list[tf.keras.metrics.Metric]:
        build = getattr(self.module, "metrics", None)
        return list(build()) if callable(build) else []

    def read(self, folder: Path, spec: InputSpec) -> Arrays:
        if self.data_format is not None:
            return super().read(folder, spec)
        assert callable(self.loader)
        try:
            x, y = self.loader(folder)
        except TaskError:
            raise
        except (TypeError, ValueError) as exc:
            raise TaskError(f"{self.module.__name__}.load_data({folder}): must return (x, y) arrays ({exc})") from None
        return Arrays(np.asarray(x), np.asarray(y))
