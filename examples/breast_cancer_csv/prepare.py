"""Writes the breast-cancer example's data: scikit-learn's bundled Wisconsin breast-cancer set
(569 examples, 30 features) as CSV files with a header row, one folder per client shard plus a
held-out folder, and the task's model config (model.json) whose Normalization layer carries the
data set's feature means and variances (what a user computes from their own data once;
``--write-model`` writes it again).

    python examples/breast_cancer_csv/prepare.py --out /tmp/bc --shards 4
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from examples.shards import fresh_folders, parser, shard_indices

HERE = Path(__file__).parent
MODEL = HERE / "model.json"


def model_config(mean: np.ndarray, variance: np.ndarray) -> dict:
    """A Keras 2 functional model config: Normalization -> Dense(16, relu) -> Dense(2) logits."""
    def init(name: str) -> dict:
        return {"module": "keras.initializers", "class_name": name, "config": {"seed": None} if name != "Zeros" else {},
                "registered_name": None}

    def dense(name: str, units: int, activation: str, inbound: str) -> dict:
        return {"module": "keras.layers", "class_name": "Dense", "name": name, "registered_name": None,
                "config": {"name": name, "trainable": True, "dtype": "float32", "units": units,
                           "activation": activation, "use_bias": True, "kernel_initializer": init("GlorotUniform"),
                           "bias_initializer": init("Zeros"), "kernel_regularizer": None, "bias_regularizer": None,
                           "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None},
                "inbound_nodes": [[[inbound, 0, 0, {}]]]}

    layers = [
        {"module": "keras.layers", "class_name": "InputLayer", "name": "features", "registered_name": None,
         "config": {"batch_input_shape": [None, len(mean)], "dtype": "float32", "sparse": False, "ragged": False,
                    "name": "features"}, "inbound_nodes": []},
        {"module": "keras.layers", "class_name": "Normalization", "name": "normalize", "registered_name": None,
         "config": {"name": "normalize", "trainable": True, "dtype": "float32", "axis": [-1], "invert": False,
                    "mean": [round(float(m), 6) for m in mean], "variance": [round(float(v), 6) for v in variance]},
         "inbound_nodes": [[["features", 0, 0, {}]]]},
        dense("hidden", 16, "relu", "normalize"),
        dense("logits", 2, "linear", "hidden"),
    ]
    return {"class_name": "Functional", "config": {"name": "breast_cancer_mlp", "trainable": True, "layers": layers,
            "input_layers": [["features", 0, 0]], "output_layers": [["logits", 0, 0]]},
            "keras_version": "2.14.0", "backend": "tensorflow"}


def main() -> None:
    from sklearn.datasets import load_breast_cancer

    args = parser(__doc__, HERE, model=True).parse_args()
    data = load_breast_cancer()
    columns = [name.replace(" ", "_") for name in data.feature_names]
    shards, held = shard_indices(len(data.target), args.shards, seed=args.seed, held_out=0.2)
    for (name, folder), idx in zip(fresh_folders(args.out, args.shards), [*shards, held], strict=True):
        with open(folder / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*columns, "diagnosis"])
            for i in idx:
                writer.writerow([*(f"{v:.6g}" for v in data.data[i]), int(data.target[i])])
    if args.write_model:
        MODEL.write_text(model_json(data.data))
    print(f"{args.out}: {args.shards} shards + held-out")


def model_json(features: np.ndarray) -> str:
    return json.dumps(model_config(features.mean(axis=0), features.var(axis=0)), indent=1) + "\n"


if __name__ == "__main__":
    main()
