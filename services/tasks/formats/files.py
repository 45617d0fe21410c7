"""What the readers share: listing a folder's data files and joining what each file held."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.common.data import Arrays
from services.tasks.spec import DataFormat, TaskError


def files_in(folder: Path, fmt: DataFormat, suffixes: tuple[str, ...]) -> list[Path]:
    """The data files of ``folder`` (sorted, so every process reads them in one order)."""
    found = sorted(p for p in folder.glob(fmt.pattern) if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise TaskError(f"{folder}: no {'/'.join(suffixes)} files (data.format {fmt.format}, pattern {fmt.pattern!r})")
    return found


def concatenate(parts: list[Arrays]) -> Arrays:
    return Arrays(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
