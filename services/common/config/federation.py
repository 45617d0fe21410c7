"""The whole federation config: one section per concern, and the run it defines."""

from __future__ import annotations

import hashlib
import json

import yaml
from pydantic import model_validator

from services.common.config.base import Strict
from services.common.config.client import ClientSettings
from services.common.config.security import SecuritySettings
from services.common.config.server import ServerSettings
from services.common.config.task import DataSettings, EvaluationSettings, ModelSettings, TaskSettings
from services.common.config.training import TrainingSettings


class FederationConfig(Strict):
    server: ServerSettings = ServerSettings()
    training: TrainingSettings = TrainingSettings()
    task: TaskSettings = TaskSettings()
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    security: SecuritySettings = SecuritySettings()
    client: ClientSettings = ClientSettings()

    @model_validator(mode="after")
    def _data_fits_task(self) -> FederationConfig:
        if self.task.source != "digits" and self.data.source in ("digits", "npz"):
            raise ValueError(
                f"data.source {self.data.source!r} is the digits task's data, but task.source is "
                f"{self.task.source!r}: set data.source to files and data.path to the task's data"
            )
        return self

    @property
    def num_shards(self) -> int:
        return self.data.num_shards or self.training.min_clients

    @property
    def run_id(self) -> str:
        """The run this config trains: ``training.run_id`` when set, else ``run-`` and a hash of the
        training, task (its source and, for a shipped task file, its content's digest), model and data
        sections. Ports, TLS, the server's and clients' operational settings are not part of it:
        changing them goes on with the same run. A checkpoint also records the loaded task's contract
        (services/tasks/contract.py): one of another task is never resumed."""
        if self.training.run_id:
            return self.training.run_id
        defining = {"training": self.training.model_dump(mode="json", exclude={"run_id"}),
                    "task": self.task.model_dump(mode="json"),
                    "model": self.model.model_dump(mode="json"), "data": self.data.model_dump(mode="json")}
        return "run-" + hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        """Deterministic YAML, loadable by :func:`load_config` (what the ConfigMap carries)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)
