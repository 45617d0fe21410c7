"""The PNG of a run: the task's headline metric (accuracy for a classifier) and the loss per round,
for each evaluation the run has (held-out on the server, federated on the clients' own splits) and
the clients' training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.runner.records import SOURCES, headline_metric


def plot_rounds(records: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in records]
    metric = headline_metric(records)
    fig, (metric_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, name in ((metric_ax, metric), (loss_ax, "loss")):
        if name is None:
            continue
        for prefix, label in SOURCES:
            key = prefix + name
            if all(key in r for r in records):
                style = {"marker": ".", "linestyle": "--"} if prefix == "train_" else {"marker": "o"}
                ax.plot(rounds, [r[key] for r in records], label=label, **style)
    metric_ax.set(title=f"{(metric or 'metric').capitalize()} per round", xlabel="round", ylabel=metric or "")
    if metric == "accuracy":
        metric_ax.set_ylim(0, 1)
    loss_ax.set(title="Loss per round", xlabel="round", ylabel="loss")
    for ax in (metric_ax, loss_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
