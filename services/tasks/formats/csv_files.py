"""``format: csv``: every ``.csv`` file in the folder, with a header row; the input is the named
feature columns in order (default: every column but the label), the label its own column. Values
must be numbers: a non-numeric cell is refused with its file, row and column."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from services.common.data import Arrays
from services.tasks.formats.checks import InputSpec, check_arrays
from services.tasks.formats.files import concatenate, files_in
from services.tasks.spec import DataFormat, TaskError


def read(folder: Path, fmt: DataFormat, spec: InputSpec) -> Arrays:
    return concatenate([check_arrays(_read_file(f, fmt), spec, str(f)) for f in files_in(folder, fmt, (".csv",))])


def _read_file(path: Path, fmt: DataFormat) -> Arrays:
    with open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter=fmt.delimiter)
        header = next(reader, None)
        if not header:
            raise TaskError(f"{path}: empty (a CSV file needs a header row naming its columns)")
        header = [h.strip() for h in header]
        if fmt.label not in header:
            raise TaskError(f"{path}: no label column {fmt.label!r} (data.label); columns: {', '.join(header)}")
        features = list(fmt.features) or [h for h in header if h != fmt.label]
        missing = [c for c in features if c not in header]
        if missing:
            raise TaskError(f"{path}: missing feature column(s) {', '.join(map(repr, missing))} (data.features); "
                            f"columns: {', '.join(header)}")
        columns = [header.index(c) for c in features]
        label = header.index(fmt.label)
        xs, ys = [], []
        for row_number, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise TaskError(f"{path}: row {row_number} has {len(row)} fields, the header {len(header)}")
            xs.append([_number(row[i], path, row_number, header[i]) for i in columns])
            ys.append(_number(row[label], path, row_number, fmt.label))
    return Arrays(np.asarray(xs, dtype=np.float64).reshape(len(xs), len(columns)), np.asarray(ys, dtype=np.float64))


def _number(cell: str, path: Path, row: int, column: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise TaskError(f"{path}: row {row}, column {column!r}: {cell[:40]!r} is not a number") from None
