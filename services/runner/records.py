"""Reading a run's ``metrics.jsonl`` for people: which evaluation a round carries (central on the
server's held-out data, ``eval_*``; federated on the clients' own splits, ``federated_eval_*``;
the clients' training, ``train_*``) and the task's headline metric (its first, e.g. accuracy)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SOURCES = (("eval_", "held-out"), ("federated_eval_", "federated eval"), ("train_", "clients (train)"))
NOT_METRICS = frozenset({"loss", "num_examples", "num_batches", "clients"})


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def headline_metric(records: Sequence[dict[str, Any]]) -> str | None:
    """The task's first metric other than the loss (``accuracy`` for the classifiers), if any."""
    for prefix, _ in SOURCES:
        for r in records:
            for key in r:
                if key.startswith(prefix) and key.removeprefix(prefix) not in NOT_METRICS:
                    name = key.removeprefix(prefix)
                    if not any(name.startswith(p) for p, _ in SOURCES):
                        return name
    return None


def evaluation(record: dict[str, Any]) -> tuple[str, str]:
    """The prefix and the name of the evaluation a round line carries: central if the server holds
    eval data, else federated, else the clients' training metrics."""
    for prefix, label in SOURCES:
        if f"{prefix}loss" in record:
            return prefix, label
    return "train_", "clients (train)"


def value(record: dict[str, Any], key: str) -> float:
    return float(record.get(key, float("nan")))
