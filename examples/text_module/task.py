"""A module task (docs/tasks.md): next-character prediction on text, for data that needs code to
become examples. Each client reads the ``.txt`` files of its own folder and turns them into
windows of ``WINDOW`` characters (ids in a fixed vocabulary, unknown characters as 0) with the
character that follows as the label. The model and the loader live in this module, which must be
importable on both sides (in the image, or on PYTHONPATH for ``tff-k8s local``); the server never
sends it and the contract check at join refuses a client whose module builds another task.

The text: the Python standard library's ``pydoc_data`` topics (prepare.py), bundled with Python."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

NAME = "next-char"
WINDOW = 12
STRIDE = 3  # one window every few characters keeps a client's examples in the thousands
# The vocabulary: the 46 most common characters of English text and code; 0 is any other.
VOCAB = " etaosnirlhdcmupf.,ygwb()v:_=k'\"x-01[]/\n*2#>jq"
IDS = {ch: i + 1 for i, ch in enumerate(VOCAB)}
LABEL = {"dtype": "int32", "shape": [], "classes": len(VOCAB) + 1}


def build_model() -> tf.keras.Model:
    return tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(WINDOW,), dtype="int32", name="chars"),
        tf.keras.layers.Embedding(len(VOCAB) + 1, 16, name="embed"),
        tf.keras.layers.Flatten(name="flatten"),
        tf.keras.layers.Dense(64, activation="relu", name="hidden"),
        tf.keras.layers.Dense(len(VOCAB) + 1, name="logits"),
    ], name="next_char")


def loss() -> tf.keras.losses.Loss:
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def metrics() -> list[tf.keras.metrics.Metric]:
    return [tf.keras.metrics.SparseCategoricalAccuracy(name="accuracy")]


def encode(text: str) -> np.ndarray:
    return np.fromiter((IDS.get(ch, 0) for ch in text.lower()), dtype=np.int32, count=len(text))


def load_data(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Windows of every ``.txt`` file in ``folder`` and the character after each."""
    xs, ys = [], []
    for path in sorted(folder.glob("*.txt")):
        ids = encode(path.read_text(encoding="utf-8"))
        starts = np.arange(0, len(ids) - WINDOW, STRIDE)
        xs.append(np.stack([ids[s : s + WINDOW] for s in starts]) if len(starts) else np.zeros((0, WINDOW), np.int32))
        ys.append(ids[starts + WINDOW])
    if not xs:
        raise ValueError(f"no .txt files in {folder}")
    return np.concatenate(xs), np.concatenate(ys)
