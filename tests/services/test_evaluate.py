"""The server's evaluation of the global model (services/tasks/evaluation.py, with the digits task): ``evaluate`` runs in
batches small enough that a large model's activations stay within a quarter of its size (or
``EVAL_MIN_BATCH_ELEMENTS``), and must give what one pass over all examples gives: the mean sparse
categorical crossentropy from logits and the share of argmax hits, computed here in numpy. The
model the server evaluates and exports is built with ``initialized=False`` (zeros instead of a
random draw, then its weights assigned): it must record the same config as the initialized one.
Imports TensorFlow; no TFF tracing."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from support.digits import evaluate, keras_model, task

from services.common.config import ModelSettings, TrainingSettings
from services.common.data import NUM_CLASSES, NUM_FEATURES, Arrays, load_digits_split
from services.tasks.evaluation import EVAL_MIN_BATCH_ELEMENTS, eval_batch_size

WIDE = 4096  # hidden units: the 4 MiB floor gives batches of 256 examples
WIDER = 60_000  # hidden units: a quarter of the model (about 1.1 M elements) is over the floor


@pytest.fixture(scope="module")
def eval_data() -> Arrays:
    _, held_out = load_digits_split(0.2, seed=0)
    assert len(held_out) == 359
    return held_out


def seeded_model(hidden_units: int, seed: int = 0) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    return keras_model(ModelSettings(hidden_units=hidden_units))


@pytest.fixture(scope="module")
def small() -> tf.keras.Model:
    return seeded_model(32)


@pytest.fixture(scope="module")
def wide() -> tf.keras.Model:
    return seeded_model(WIDE, seed=1)


@pytest.fixture(scope="module")
def wider() -> tf.keras.Model:
    return seeded_model(WIDER, seed=2)


def one_shot(model: tf.keras.Model, arrays: Arrays) -> dict[str, float]:
    """The reference: every example in one call, the loss in float64 numpy."""
    logits = np.asarray(model(arrays.x, training=False), np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(len(arrays.y)), arrays.y]
    return {"eval_loss": float(loss.mean()), "eval_accuracy": float(np.mean(logits.argmax(axis=1) == arrays.y))}


class Counting:
    """``model`` with a record of the examples in each call, to see the batches evaluate makes."""

    def __init__(self, model: tf.keras.Model) -> None:
        self.model = model
        self.batches: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, x: np.ndarray, **kwargs: Any) -> Any:
        self.batches.append(len(x))
        return self.model(x, **kwargs)


def assert_same(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == {"eval_loss", "eval_accuracy"}
    assert all(isinstance(v, float) for v in got.values())
    assert got["eval_loss"] == pytest.approx(expected["eval_loss"], rel=1e-5)
    assert got["eval_accuracy"] == expected["eval_accuracy"]  # a count of hits: exact


def first(arrays: Arrays, n: int) -> Arrays:
    return Arrays(arrays.x[:n], arrays.y[:n])


# ---- evaluate ------------------------------------------------------------------------------------
def test_small_model_is_evaluated_in_one_batch(small: tf.keras.Model, eval_data: Arrays) -> None:
    counting = Counting(small)
    got = evaluate(counting, eval_data)  # type: ignore[arg-type]
    assert counting.batches == [len(eval_data)]
    assert_same(got, one_shot(small, eval_data))
    assert 0.0 < got["eval_accuracy"] < 1.0 and got["eval_loss"] > 0.0  # not a degenerate model


@pytest.mark.parametrize("n", [1, 2, 255, 256, 257, 359])
def test_wide_model_in_batches_equals_one_pass(wide: tf.keras.Model, eval_data: Arrays, n: int) -> None:
    arrays = first(eval_data, n)
    batch = eval_batch_size(wide, n)
    assert batch == min(n, 256)
    counting = Counting(wide)
    got = evaluate(counting, arrays)  # type: ignore[arg-type]
    assert sum(counting.batches) == n
    assert counting.batches[:-1] == [batch] * (len(counting.batches) - 1) and 0 < counting.batches[-1] <= batch
    assert len(counting.batches) == -(-n // batch)
    assert_same(got, one_shot(wide, arrays))


def test_wider_model_in_many_batches_equals_one_pass(wider: tf.keras.Model, eval_data: Arrays) -> None:
    counting = Counting(wider)
    got = evaluate(counting, eval_data)  # type: ignore[arg-type]
    assert counting.batches == [18] * 19 + [359 - 18 * 19]
    assert_same(got, one_shot(wider, eval_data))


# ---- eval_batch_size -----------------------------------------------------------------------------
@pytest.mark.parametrize("hidden_units", [1, 32, WIDE, WIDER])
def test_eval_batch_size_bounds_the_activations(hidden_units: int, small: tf.keras.Model, wide: tf.keras.Model,
                                                wider: tf.keras.Model) -> None:
    model = {32: small, WIDE: wide, WIDER: wider}.get(hidden_units) or seeded_model(hidden_units)
    params = NUM_FEATURES * hidden_units + hidden_units + hidden_units * NUM_CLASSES + NUM_CLASSES
    assert model.count_params() == params
    widest = max(hidden_units, NUM_CLASSES)  # elements of the widest layer's output, per example
    budget = max(params // 4, EVAL_MIN_BATCH_ELEMENTS)
    for examples in (1, 7, 359, 10**6):
        batch = eval_batch_size(model, examples)
        assert 1 <= batch <= examples
        assert batch * widest <= budget
        assert batch == examples or (batch + 1) * widest > budget  # as large as the budget allows


def test_eval_batch_size_uses_a_quarter_of_a_large_model() -> None:
    """Over the floor, the budget is a quarter of the model's parameters, of whatever shape the
    widest layer's output is; a batch holds at least one example."""
    def model(output_shape: tuple[int | None, ...], params: int) -> Any:
        layer = SimpleNamespace(output=SimpleNamespace(shape=output_shape))
        small_layer = SimpleNamespace(output=SimpleNamespace(shape=(None, 3)))
        return SimpleNamespace(layers=[small_layer, layer], count_params=lambda: params)

    assert eval_batch_size(model((None, 1000), 4 * 50_000_000), 10**9) == 50_000
    assert eval_batch_size(model((None, 10, 10, 10), 4 * 50_000_000), 10**9) == 50_000
    assert eval_batch_size(model((None, 1000), 40), 10**9) == EVAL_MIN_BATCH_ELEMENTS // 1000
    assert eval_batch_size(model((None, 10 * EVAL_MIN_BATCH_ELEMENTS), 40), 100) == 1


# ---- keras_model(initialized=False) --------------------------------------------------------------
def kernels(model: tf.keras.Model) -> list[np.ndarray]:
    return [layer.kernel.numpy() for layer in model.layers]


@pytest.mark.parametrize("hidden_units", [32, 300])
def test_uninitialized_model_has_zero_weights_and_the_same_config(hidden_units: int) -> None:
    settings = ModelSettings(hidden_units=hidden_units)
    zero, init = keras_model(settings, initialized=False), keras_model(settings, initialized=True)
    assert all(not k.any() for k in kernels(zero)) and all(not w.any() for w in zero.get_weights())
    assert all(k.any() for k in kernels(init))  # the control: the initialized one is drawn
    assert [w.shape for w in zero.get_weights()] == [w.shape for w in init.get_weights()]
    assert zero.get_config() == init.get_config()
    for layer in zero.get_config()["layers"]:  # it records the real initializer, not the zeros
        if layer["class_name"] == "Dense":
            assert layer["config"]["kernel_initializer"]["class_name"] == "GlorotUniform"


def test_uninitialized_model_saves_the_same_config(tmp_path: Path) -> None:
    """What an exported model.keras records does not depend on how the model was built."""
    configs = []
    for initialized in (False, True):
        path = tmp_path / f"{initialized}.keras"
        keras_model(initialized=initialized).save(path)
        with zipfile.ZipFile(path) as archive:
            configs.append(json.loads(archive.read("config.json")))
    assert configs[0] == configs[1]


def test_uninitialized_model_with_assigned_weights_is_the_model(small: tf.keras.Model, eval_data: Arrays) -> None:
    """As the server uses it: built at zeros, then given the round's weights."""
    zero = task(TrainingSettings(), ModelSettings(hidden_units=32)).model_to_fill()
    assert all(not k.any() for k in kernels(zero))
    zero.set_weights(small.get_weights())
    np.testing.assert_array_equal(zero(eval_data.x, training=False), small(eval_data.x, training=False))
    assert evaluate(zero, eval_data) == evaluate(small, eval_data)
