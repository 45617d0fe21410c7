"""Learning tasks (docs/tasks.md): the seam between what is learned and how a federation runs it.

- ``base``: the :class:`LearningTask` interface; ``digits``, ``declarative`` (a task file, no code:
  ``spec`` and ``allowlist``) and ``module_task`` (a module in the image) implement it;
- ``formats``: client data formats, checked against the task's input spec;
- ``federated``: a task as TFF runs it (client work, optimizers, wire types); ``contract``: what a
  client and the server must agree on; ``evaluation``: central and federated evaluation;
  ``sources``: where each side's data comes from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.common.config import FederationConfig
from services.tasks.spec import TaskError, read_task_file

if TYPE_CHECKING:
    from services.tasks.base import LearningTask
    from services.tasks.federated import FederatedTask

# The package itself stays TensorFlow-free: the Pulumi program imports ``spec`` and ``allowlist`` to check
# a task file before it ships it in a ConfigMap (infra/task_objects.py), and importing a submodule runs
# this file first. What needs TensorFlow is imported where it is used.


def __getattr__(name: str) -> Any:
    if name == "FederatedTask":
        from services.tasks.federated import FederatedTask

        return FederatedTask
    if name == "LearningTask":
        from services.tasks.base import LearningTask

        return LearningTask
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def learning_task(cfg: FederationConfig) -> LearningTask:
    """The configured task (``task.source``); :class:`TaskError` when it cannot be used."""
    from services.tasks.declarative import DeclarativeTask
    from services.tasks.digits import DigitsTask
    from services.tasks.module_task import ModuleTask

    source = cfg.task.source
    if cfg.task.kind == "builtin":
        return DigitsTask(cfg.model)
    if cfg.task.kind == "module":
        return ModuleTask(source.removeprefix("module:"))
    spec, base = read_task_file(source)
    return DeclarativeTask(spec, base)


def federated_task(cfg: FederationConfig) -> FederatedTask:
    from services.tasks.federated import FederatedTask

    return FederatedTask(cfg.training, learning_task(cfg))


__all__ = ["FederatedTask", "LearningTask", "TaskError", "federated_task", "learning_task"]
