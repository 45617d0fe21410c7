"""One table of aggregators (services/common/aggregators.py): the config schema's choices, the local
runner's ``--aggregator`` choices and the README's list are its names, each name is built by the
class the table points to, and the schema that reads the table imports neither the server package
nor TensorFlow (the Pulumi program imports it)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from services.common import tensors
from services.common.aggregators import AGGREGATORS, DEFAULT
from services.common.config import TrainingSettings
from services.runner.local import parser
from services.server.aggregation import Aggregator, Slots, aggregator_for, implementation

ROOT = Path(__file__).resolve().parents[2]
LAYOUT = tensors.Layout((tensors.Leaf("update.0", np.dtype("<f4"), (3,), 0),
                         tensors.Leaf("update_weight", np.dtype("<f4"), (), 12)), 16, "0123456789abcdef")


def test_the_config_schema_offers_the_tables_names() -> None:
    field = TrainingSettings.model_fields["aggregator"]
    assert get_args(field.annotation) == tuple(AGGREGATORS)
    assert field.default == DEFAULT == TrainingSettings().aggregator


def test_the_local_runner_offers_the_tables_names() -> None:
    (action,) = [a for a in parser()._actions if a.dest == "aggregator"]
    assert list(action.choices or ()) == list(AGGREGATORS)


def test_the_readme_lists_the_tables_names() -> None:
    listed = re.findall(r"--aggregator ([a-z_\\|]+)\]", (ROOT / "README.md").read_text())
    expected = "\\|".join(AGGREGATORS)
    assert listed == [expected], f"README.md: write `[--aggregator {expected}]` in the `tff-k8s local` row"


@pytest.mark.parametrize("name", list(AGGREGATORS))
def test_each_name_is_built_by_its_implementation(name: str) -> None:
    cls = implementation(name)
    assert issubclass(cls, Aggregator) and cls.name == name
    settings = {"aggregator": name, "clients_per_round": 4, "min_clients": 4, "dp_noise_multiplier": 0.1}
    built = aggregator_for(TrainingSettings(**settings), LAYOUT, Slots(1))
    assert type(built) is cls and built.layout == LAYOUT


def test_the_config_schema_imports_neither_the_server_nor_tensorflow() -> None:
    code = ("import sys, services.common.config; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow' "
            "or m.startswith('services.server') or m.startswith('tensorflow_federated')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
