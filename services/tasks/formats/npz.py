"""``format: npz``: every ``.npz`` file in the folder, arrays ``x`` and ``y`` (names in the task's
data format), loaded with ``allow_pickle=False``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from services.common.data import Arrays
from services.tasks.formats.checks import InputSpec, check_arrays
from services.tasks.formats.files import concatenate, files_in
from services.tasks.spec import DataFormat, TaskError


def read(folder: Path, fmt: DataFormat, spec: InputSpec) -> Arrays:
    parts = []
    for f in files_in(folder, fmt, (".npz",)):
        try:
            with np.load(f, allow_pickle=False) as data:
                missing = [k for k in (fmt.x, fmt.y) if k not in data]
                if missing:
                    raise TaskError(f"{f}: needs arrays {fmt.x!r} and {fmt.y!r}, has {sorted(data.files)}")
                arrays = Arrays(np.asarray(data[fmt.x]), np.asarray(data[fmt.y]))
        except TaskError:
            raise
        except (OSError, ValueError, TypeError, EOFError, AttributeError, zipfile.BadZipFile) as exc:
            raise TaskError(f"{f}: not a readable .npz of numeric arrays ({type(exc).__name__}: {exc})") from None
        parts.append(check_arrays(arrays, spec, str(f)))
    return concatenate(parts)
