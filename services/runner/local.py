"""``tff-k8s local``: one server and N client processes on loopback, started with the same
entrypoints the containers use (``python -m services.server|client --config F``), with a live
progress bar and per-round table. Writes metrics.jsonl, model.keras and a plot to --output-dir,
and leaves no process behind.

A process that crashes is restarted as its Pod would be (services.runner.restarts: backoff from
1 s doubling to 30 s); a restarted server resumes from its checkpoint and the clients rejoin it.
The summary says what was restarted and why. Exit codes: 0 training completed; 2 bad config (the
runner's, or a service that exited 2); 1 anything else (a process crashed too often, a timeout)."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.common.aggregators import AGGREGATORS
from services.common.config import BUILTIN_TASKS, ConfigError, FederationConfig, load_config, parse_set
from services.runner.loopback import loopback_overrides
from services.runner.plot import plot_rounds
from services.runner.processes import ProcessGroup
from services.runner.records import evaluation, headline_metric, read_records, value
from services.runner.restarts import FATAL_EXIT, RestartPolicy
from services.runner.supervisor import Supervisor

CONFIG_NAME = "federation.yaml"
PLOT_NAME = "training.png"
RUN_FILES = ("metrics.jsonl", "model.keras", "checkpoint.bin", "run.json", PLOT_NAME, CONFIG_NAME)
# Local runs share one name, so --resume continues (and may extend) whatever ran in --output-dir.
LOCAL_RUN_ID = "local"
CLIENT_EXIT_S = 15.0  # after the server finished: how long clients get to exit on their own


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tff-k8s local", description=__doc__)
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    p.add_argument("--output-dir", type=Path, default=Path("out/local"), help="where results go (default out/local)")
    p.add_argument("--seed", type=int, default=0, help="model init, sampling and partition seed (default 0)")
    p.add_argument("--partition", choices=["iid", "dirichlet"], help="how the digits are split across clients")
    p.add_argument("--alpha", type=float, help="Dirichlet alpha for --partition dirichlet")
    p.add_argument("--aggregator", choices=list(AGGREGATORS), help="server aggregator")
    p.add_argument("--task", metavar="FILE_OR_MODULE",
                   help="the learning task: a task file (.yaml), a Python module (package.module, on PYTHONPATH) or "
                        "digits (default); docs/tasks.md")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="the clients' data in the task's format: DIR/shard-0 .. DIR/shard-<clients-1>, one per client")
    p.add_argument("--config", help="a federation YAML to start from (services/common/config/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set training.local_epochs=2 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --output-dir")
    p.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds (default 1800)")
    p.add_argument("--max-restarts", type=int, default=RestartPolicy.max_restarts, metavar="N",
                   help="restarts of one crashed process within 10 min before giving up (default 5; 0: none)")
    return p


def build_config(args: argparse.Namespace) -> FederationConfig:
    if args.clients < 1:
        raise ConfigError("--clients: must be >= 1")
    overrides: dict[str, Any] = {
        "training.rounds": args.rounds,
        "training.seed": args.seed,
        "training.min_clients": args.clients,
        "training.clients_per_round": args.clients,
        "data.num_shards": args.clients,
        **loopback_overrides(args.output_dir.resolve()),
        "training.run_id": LOCAL_RUN_ID,
    }
    for flag, key in (("partition", "data.partition"), ("alpha", "data.dirichlet_alpha"),
                      ("aggregator", "training.aggregator")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.task is not None:
        overrides["task.source"] = task_source(args.task)
    if args.data is not None:
        overrides.update(data_overrides(args.data.resolve(), args.clients))
    overrides.update(parse_set(args.overrides))
    cfg = load_config(args.config, overrides=overrides, environ={})
    return cfg.model_copy(update={"client": cfg.client.model_copy(
        update={"server_address": f"127.0.0.1:{cfg.server.port}"})})


def task_source(arg: str) -> str:
    """``--task``: a task file (made absolute: every process reads it), a module, or a built-in."""
    if arg.endswith((".yaml", ".yml")):
        path = Path(arg).resolve()
        if not path.is_file():
            raise ConfigError(f"--task {arg}: no such task file")
        return str(path)
    return arg if arg in BUILTIN_TASKS or arg.startswith("module:") else f"module:{arg}"


def data_overrides(root: Path, clients: int) -> dict[str, Any]:
    """``--data DIR``: each client reads its shard folder, as on a cluster's shared data volume."""
    shards = sorted(p.name for p in root.glob("shard-*") if p.is_dir()) if root.is_dir() else []
    if len(shards) < clients:
        raise ConfigError(f"--data {root}: needs a folder per client (shard-0 .. shard-{clients - 1}), found "
                          f"{len(shards)}: {', '.join(shards) or 'none'} (docs/tasks.md)")
    return {"data.source": "files", "data.path": str(root), "data.sharded": True}


def _row(r: dict[str, Any], metric: str | None) -> tuple[str, ...]:
    prefix, _ = evaluation(r)
    shown = f"{value(r, prefix + metric):.4f}" if metric else "-"
    return (str(r["round"]), f"{r['clients']}/{r['sampled']}", f"{value(r, 'train_loss'):.4f}",
            f"{value(r, prefix + 'loss'):.4f}", shown, f"{r['seconds']:.2f}")


class LocalRun:
    def __init__(self, cfg: FederationConfig, clients: int, out_dir: Path, console: Console,
                 policy: RestartPolicy | None = None) -> None:
        self.cfg, self.clients, self.out_dir, self.console = cfg, clients, out_dir, console
        self.policy = policy or RestartPolicy()
        self.config_path = out_dir / CONFIG_NAME
        self.metrics_path = out_dir / "metrics.jsonl"

    def commands(self) -> dict[str, list[str]]:
        """Each process's command line, by name: the containers' entrypoints on this run's config."""
        base = [sys.executable, "-m"]
        conf = ["--config", str(self.config_path)]
        commands = {"server": [*base, "services.server", *conf]}
        for i in range(self.clients):
            commands[f"client-{i}"] = [*base, "services.client", *conf, "--set", f"client.name=local-client-{i}"]
        return commands

    def run(self, timeout: float) -> int:
        self.config_path.write_text(self.cfg.to_yaml())
        env = {"SERVER_ADDRESS": self.cfg.client.server_address, "PYTHONUNBUFFERED": "1"}
        with ProcessGroup(self.out_dir / "logs") as group:
            sup = Supervisor(group, self.policy)
            for name, argv in self.commands().items():
                sup.start(name, argv, env)
            return self._watch(sup, timeout)

    def _watch(self, sup: Supervisor, timeout: float) -> int:
        total = self.cfg.training.rounds
        shown = len(read_records(self.metrics_path))
        end = time.monotonic() + timeout
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as progress:
            bar = progress.add_task("starting (TensorFlow loads in each process)", total=total, completed=shown)
            # The metric column: the task's first metric (accuracy for a classifier), named in the summary.
            header = "  ".join(f"{c:>10}" for c in ("round", "clients", "train loss", "eval loss", "eval metric",
                                                    "seconds"))
            progress.console.print(header)
            while True:
                notes = sup.poll()  # before reading the metrics: a server that exited 0 wrote them all
                records = read_records(self.metrics_path)
                metric = headline_metric(records)
                for r in records[shown:]:
                    progress.console.print("  ".join(f"{v:>10}" for v in _row(r, metric)))
                for note in notes:
                    progress.console.print(note, style="yellow", markup=False, highlight=False)
                shown = len(records)
                progress.update(bar, completed=shown, description=f"training ({self.clients} clients)")
                if sup.gave_up:
                    return self._fail(sup)
                if sup.finished("server"):
                    break
                if time.monotonic() > end:
                    self.console.print(f"[red]timed out after {timeout:.0f}s[/red]; logs in {self.out_dir / 'logs'}")
                    self._restarts(sup)
                    return 1
                time.sleep(0.5)
        self._wind_down(sup)
        return self._finish(read_records(self.metrics_path), sup)

    def _wind_down(self, sup: Supervisor) -> None:
        """Training is done: no more restarts. Clients the server told DONE exit by themselves; one
        that was restarting missed it and is stopped with the group."""
        sup.stop_restarting()
        end = time.monotonic() + CLIENT_EXIT_S
        while time.monotonic() < end:
            sup.poll()
            if not sup.running():
                return
            time.sleep(0.2)

    def _fail(self, sup: Supervisor) -> int:
        for child, decision in sup.gave_up:
            self.console.print(f"[red]{child.name} {decision.why}: gave up, {decision.reason}[/red] ({child.log_path}):")
            self.console.print(child.log_tail(), markup=False, highlight=False)
        self._restarts(sup)
        return FATAL_EXIT if any(d.code == FATAL_EXIT for _, d in sup.gave_up) else 1

    def _restarts(self, sup: Supervisor) -> None:
        if summary := sup.summary():
            self.console.print(summary, markup=False, highlight=False)

    def _finish(self, records: list[dict[str, Any]], sup: Supervisor) -> int:
        if len(records) < self.cfg.training.rounds:
            self.console.print(f"[red]server stopped after {len(records)} of {self.cfg.training.rounds} rounds[/red]")
            self._restarts(sup)
            return 1
        plot = plot_rounds(records, self.out_dir / PLOT_NAME)
        last = records[-1]
        prefix, label = evaluation(last)
        metric = headline_metric(records) or "loss"
        self.console.print(
            f"[green]done[/green]: {len(records)} rounds, {label} {metric} {value(last, prefix + metric):.4f}\n"
            f"  metrics: {self.metrics_path}\n  model:   {self.out_dir / 'model.keras'}\n  plot:    {plot}"
        )
        self._restarts(sup)
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    console = Console()
    try:
        if args.max_restarts < 0:
            raise ConfigError("--max-restarts: must be >= 0")
        cfg = build_config(args)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]", markup=False)
        return 2
    out: Path = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    policy = RestartPolicy(max_restarts=args.max_restarts)

    def on_sigterm(_signum: int, _frame: object) -> None:
        raise SystemExit(143)  # unwinds through the ProcessGroup, which stops every child

    signal.signal(signal.SIGTERM, on_sigterm)
    return LocalRun(cfg, args.clients, out, console, policy).run(args.timeout)
