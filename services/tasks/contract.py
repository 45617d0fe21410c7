"""What a client and the server must agree on to train together: the whole learning task (its
architecture, input, label, loss, metrics, the weights' wire layout) and how clients train
(algorithm, client optimizer, epochs, batch size). Each part is hashed on its own, so a refusal
says which parts differ. The server refuses a client whose contract differs at join; the run's
identity includes the fingerprint. No TensorFlow here."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from services.common.config import TrainingSettings

PART_HASH_CHARS = 16
MAX_PARTS = 16


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def client_training(training: TrainingSettings) -> dict[str, Any]:
    """The training settings that change what a client computes."""
    keys = ("algorithm", "proximal_mu", "client_optimizer", "client_learning_rate", "client_momentum",
            "local_epochs", "batch_size")
    return {k: getattr(training, k) for k in keys}


@dataclass(frozen=True)
class Contract:
    parts: dict[str, str]  # part name -> hash of that part

    @classmethod
    def of(cls, described: Mapping[str, Any]) -> Contract:
        return cls({name: _digest(value)[:PART_HASH_CHARS] for name, value in sorted(described.items())})

    @property
    def fingerprint(self) -> str:
        return _digest(self.parts)[:PART_HASH_CHARS]

    def differences(self, other: Mapping[str, str]) -> list[str]:
        """The parts where ``other`` (a peer's contract) differs from this one, each as
        ``name (ours X, theirs Y)``; empty when they agree."""
        names = sorted(set(self.parts) | set(other))
        return [f"{n} (server {self.parts.get(n, 'absent')}, client {other.get(n, 'absent')})"
                for n in names if self.parts.get(n) != other.get(n)]


def check_peer(parts: Mapping[str, str]) -> dict[str, str]:
    """A peer's contract as sent (part names and hashes of bounded size), or ValueError."""
    if len(parts) > MAX_PARTS:
        raise ValueError(f"a task contract has at most {MAX_PARTS} parts, got {len(parts)}")
    out = {}
    for name, value in parts.items():
        if not name.isidentifier() or len(name) > 32 or len(value) != PART_HASH_CHARS \
                or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("a task contract part is an identifier and a 16-digit hex hash")
        out[name] = value
    return out
