"""A run's identity and the one-run-per-directory bookkeeping (services/server/runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.config import ConfigError, load_config
from services.server import runs


def cfg(**overrides: object):
    return load_config(None, overrides=overrides, environ={})


@pytest.mark.parametrize("key, value", [
    ("training.rounds", 11), ("training.seed", 1), ("model.hidden_units", 64), ("data.partition", "dirichlet"),
    ("training.aggregator", "robust"), ("training.client_learning_rate", 0.2),
])
def test_changing_what_defines_the_training_is_another_run(key: str, value: object) -> None:
    assert cfg(**{key: value}).run_id != cfg().run_id


@pytest.mark.parametrize("key, value", [
    ("server.port", 6000), ("security.tls", False), ("client.give_up_after_s", 5.0), ("server.upload_slots", 4),
])
def test_operational_settings_keep_the_run(key: str, value: object) -> None:
    assert cfg(**{key: value}).run_id == cfg().run_id


def test_a_named_run_keeps_its_name_whatever_else_changes() -> None:
    assert cfg(**{"training.run_id": "digits-a"}).run_id == "digits-a"
    assert cfg(**{"training.run_id": "digits-a", "training.rounds": 99}).run_id == "digits-a"
    assert cfg().run_id.startswith("run-") and len(cfg().run_id) == len("run-") + 12


@pytest.mark.parametrize("bad", ["", "Digits", "a b", "-x", "x" * 64, "../x"])
def test_run_names_are_checked(bad: str) -> None:
    with pytest.raises(ConfigError, match="training.run_id"):
        cfg(**{"training.run_id": bad})


def test_archive_moves_every_file_of_the_current_run(tmp_path: Path) -> None:
    for name in ("checkpoint.bin", "metrics.jsonl", "model.keras", "run.json"):
        (tmp_path / name).write_text(name)
    (tmp_path / "runs" / "older").mkdir(parents=True)
    dest = runs.archive(tmp_path, "run-1")
    assert dest == tmp_path / "runs" / "run-1"
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoint.bin", "metrics.jsonl", "model.keras", "run.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    (tmp_path / "metrics.jsonl").write_text("again")
    assert runs.archive(tmp_path, "run-1") == tmp_path / "runs" / "run-1.2", "never overwrites an archived run"


def test_begin_and_finish_record_the_run(tmp_path: Path) -> None:
    runs.begin(tmp_path, "run-a", {"training": {"rounds": 2}}, resuming=False)
    started = runs.read_run(tmp_path)
    assert started is not None and started["run_id"] == "run-a" and started["finished"] is False
    runs.begin(tmp_path, "run-a", {"training": {"rounds": 2}}, resuming=True)
    assert runs.read_run(tmp_path) == started, "resuming the same run keeps its record"
    runs.finish(tmp_path, 2)
    done = json.loads((tmp_path / runs.RUN_FILE).read_text())
    assert done["finished"] is True and done["rounds"] == 2 and done["started_at"] == started["started_at"]
    runs.begin(tmp_path, "run-a", {"training": {"rounds": 2}}, resuming=False)
    assert runs.read_run(tmp_path)["finished"] is False, "a run without a checkpoint starts over"
