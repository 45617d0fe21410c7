"""Runs in the server's output directory.

The directory holds one run at a time, the current one: ``run.json`` (its identity and state),
``checkpoint.bin``, ``metrics.jsonl`` and ``model.keras``. A server started with a config of
another run (:attr:`FederationConfig.run_id`: more rounds, another seed, another model...) moves
the previous run's files to ``runs/<its run id>/`` and starts afresh, so a checkpoint is never
resumed by a run it does not belong to, and nothing of the previous run is lost.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from services.common.logs import fields

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
ARCHIVE_DIR = "runs"


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (temporary file, rename)."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_run(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def archive(out_dir: Path, run_id: str) -> Path:
    """Move every file of the current run (everything at the top of ``out_dir`` but the archive)
    into ``runs/<run_id>/`` (``<run_id>.2`` and so on if that exists already)."""
    base = out_dir / ARCHIVE_DIR
    dest = base / run_id
    n = 1
    while dest.exists():
        n += 1
        dest = base / f"{run_id}.{n}"
    dest.mkdir(parents=True)
    for entry in sorted(out_dir.iterdir()):
        if entry.name != ARCHIVE_DIR:
            entry.rename(dest / entry.name)
    log.info("previous run archived", extra=fields(run=run_id, to=str(dest)))
    return dest


def begin(out_dir: Path, run_id: str, identity: dict[str, Any], *, resuming: bool) -> None:
    """Record that ``out_dir`` now holds run ``run_id``: a new record unless ``resuming`` it (a run
    with no checkpoint yet starts over, whatever an earlier record says)."""
    current = read_run(out_dir)
    if not resuming or current is None or current.get("run_id") != run_id:
        write_json(out_dir / RUN_FILE, {"run_id": run_id, "started_at": time.time(), "finished": False, **identity})


def finish(out_dir: Path, rounds: int) -> None:
    current = read_run(out_dir) or {}
    if not current.get("finished"):
        write_json(out_dir / RUN_FILE, {**current, "finished": True, "rounds": rounds, "finished_at": time.time()})
