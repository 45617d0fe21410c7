"""Writes the CNN example's data: scikit-learn's bundled 8x8 digits as PNG files (grayscale,
pixels 0..16 scaled to 0..255), one sub-folder per class in each client shard, plus a held-out
folder. ``--write-model`` writes model.json again: a small CNN with BatchNormalization, from Keras
itself (``model.to_json()``), so the declarative task needs no code.

    python -m examples.digits_cnn_images.prepare --out /tmp/cnn --shards 4
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from examples.shards import fresh_folders, parser, shard_indices

HERE = Path(__file__).parent
MODEL = HERE / "model.json"


def write_model() -> None:
    import tensorflow as tf

    model = tf.keras.Sequential([
        tf.keras.layers.InputLayer(input_shape=(8, 8, 1), name="pixels"),
        tf.keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv"),
        tf.keras.layers.BatchNormalization(name="norm"),
        tf.keras.layers.MaxPooling2D(2, name="pool"),
        tf.keras.layers.Flatten(name="flatten"),
        tf.keras.layers.Dense(10, name="logits"),
    ], name="digits_cnn")
    MODEL.write_text(model.to_json(indent=1) + "\n")


def main() -> None:
    import tensorflow as tf
    from sklearn.datasets import load_digits

    args = parser(__doc__, HERE, model=True).parse_args()
    digits = load_digits()
    pixels = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., np.newaxis]
    shards, held = shard_indices(len(digits.target), args.shards, seed=args.seed, held_out=0.2)
    for (_, folder), idx in zip(fresh_folders(args.out, args.shards), [*shards, held], strict=True):
        for i in idx:
            label = folder / str(int(digits.target[i]))
            label.mkdir(exist_ok=True)
            (label / f"{i:04d}.png").write_bytes(tf.io.encode_png(pixels[i]).numpy())
    if args.write_model:
        write_model()
    print(f"{args.out}: {args.shards} shards + held-out")


if __name__ == "__main__":
    main()
