"""Structured JSON logs, one object per line, for both services (what a log pipeline ingests)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(role: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("TFF_K8S_LOG_LEVEL", "INFO").upper())
    for noisy in ("absl", "tensorflow", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger(role).debug("logging ready")


def fields(**kv: object) -> dict[str, dict[str, object]]:
    """``log.info("msg", extra=fields(round=3))`` adds ``round`` to the JSON line."""
    return {"fields": kv}
