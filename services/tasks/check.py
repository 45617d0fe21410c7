"""``tff-k8s task check``: load a task and a sample of its data, run one local training step,
and say what the federation will need: the model's size on the wire, the server's memory at the
configured upload slots, and any problem, each with its fix. Exit 0 when nothing stops the task,
2 when something does (a task or data error, or a problem that would fail the run)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from services.common.config import BUILTIN_TASKS, ConfigError, FederationConfig, load_config, parse_set


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tff-k8s task check", description=__doc__)
    p.add_argument("--task", required=True, metavar="FILE_OR_MODULE",
                   help="a task file (.yaml), a module (package.module) or digits")
    p.add_argument("--data", type=Path, help="the data: a folder of shard-<i> folders, or one client's folder")
    p.add_argument("--config", help="a federation YAML to start from")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def human(nbytes: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} bytes"


def config_for(args: argparse.Namespace) -> FederationConfig:
    task = args.task
    if task.endswith((".yaml", ".yml")):
        task = str(Path(task).resolve())
    elif task not in BUILTIN_TASKS and not task.startswith("module:"):
        task = f"module:{task}"
    overrides: dict[str, object] = {"task.source": task}
    if args.data is not None:
        sharded = (args.data / "shard-0").is_dir()
        overrides.update({"data.source": "files", "data.path": str(args.data.resolve()), "data.sharded": sharded})
    overrides.update(parse_set(args.overrides))
    return load_config(args.config, overrides=overrides, environ={})


def check(cfg: FederationConfig, out: list[str]) -> list[str]:
    """Lines describing the task into ``out``; the problems (each with its fix) returned."""
    from services.client.trainer import ClientUpdate
    from services.common import tensors
    from services.tasks import federated_task
    from services.tasks.federated import to_dataset
    from services.tasks.sources import client_data

    task = federated_task(cfg)
    spec = task.input_spec
    model = task.keras_model()
    weights, result = task.weights_layout.nbytes, task.result_layout.nbytes
    slots = cfg.server.upload_slots
    out += [f"task: {task.name} (contract {task.contract.fingerprint})",
            f"input: {spec.describe()}; label: {spec.label.dtype} shape {list(spec.label.shape)}"
            + (f", {spec.label.classes} classes" if spec.label.classes else ""),
            f"model: {model.count_params():,} parameters; on the wire {human(weights)} down, "
            f"{human(result)} up per client per round",
            f"server memory for the model: about {human((3 + slots) * weights)} ((3 + server.upload_slots="
            f"{slots}) x the model), plus the fixed cost of TensorFlow, TFF and gRPC"]
    problems = []
    if result > cfg.server.max_payload_bytes:
        problems.append(f"a client's result ({result:,} bytes) is over server.max_payload_bytes "
                        f"({cfg.server.max_payload_bytes:,}): raise server.max_payload_bytes")
    data = client_data(cfg, task, 0, cfg.num_shards)
    out.append(f"data (shard 0): {len(data.train)} training examples"
               + (f", {len(data.eval)} for federated evaluation" if data.eval is not None else ""))
    if len(data.train) < cfg.training.batch_size:
        problems.append(f"shard 0 has {len(data.train)} examples, fewer than training.batch_size "
                        f"({cfg.training.batch_size}): lower training.batch_size")
    sample = to_dataset(data.train, cfg.training).take(2)
    update = ClientUpdate(task)
    _, metrics = update(tensors.flatten(task.initial_weights()), sample)
    out.append("one local step: " + ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items())))
    if not all(math.isfinite(v) for v in metrics.values()):
        problems.append("the local step's loss or metrics are not finite: lower training.client_learning_rate or "
                        "check the data's scale")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from services.tasks.spec import TaskError

    lines: list[str] = []
    try:
        problems = check(config_for(args), lines)
    except (ConfigError, TaskError) as exc:
        print("\n".join(lines), file=sys.stdout)
        print(f"problem: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    print("ok: nothing stops this task" if not problems else f"{len(problems)} problem(s)")
    return 2 if problems else 0
