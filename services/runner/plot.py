"""The PNG of a run: held-out accuracy and loss (and the clients' training loss) per round."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_rounds(records: Sequence[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in records]
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    acc_ax.plot(rounds, [r["eval_accuracy"] for r in records], marker="o", label="held-out")
    if all("train_accuracy" in r for r in records):
        acc_ax.plot(rounds, [r["train_accuracy"] for r in records], marker=".", linestyle="--", label="clients (train)")
    acc_ax.set(title="Accuracy per round", xlabel="round", ylabel="accuracy", ylim=(0, 1))
    loss_ax.plot(rounds, [r["eval_loss"] for r in records], marker="o", label="held-out")
    if all("train_loss" in r for r in records):
        loss_ax.plot(rounds, [r["train_loss"] for r in records], marker=".", linestyle="--", label="clients (train)")
    loss_ax.set(title="Loss per round", xlabel="round", ylabel="cross-entropy")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
