"""The declarative task's architecture allowlist (services/tasks/allowlist.py), played as an
attacker: a task file is data, and a config that would run code on a client or the server is
refused before Keras deserializes any of it, with the offending object and its path named. The
attack it stops is real: Keras' own loader imports whatever module a ``.keras`` config names
(CVE-2025-1550), shown here with a payload module that leaves a marker when imported."""

from __future__ import annotations

import copy
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.tasks.allowlist import check_model_json
from services.tasks.spec import TaskError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PAYLOAD = "tffk8s_payload_module"
MARKER_ENV = "marker.txt"


def example_config(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name / "model.json").read_text())


@pytest.mark.parametrize("example", ["breast_cancer_csv", "digits_cnn_images"])
def test_the_examples_architectures_are_allowed(example: str) -> None:
    config = example_config(example)
    assert check_model_json(json.dumps(config), "model.json") == config


def with_layer(layer: dict[str, Any]) -> str:
    config = example_config("digits_cnn_images")
    config["config"]["layers"].insert(2, layer)
    return json.dumps(config)


def layer(class_name: str, module: str | None = "keras.layers", **config: Any) -> dict[str, Any]:
    return {"module": module, "class_name": class_name, "config": {"name": "x", **config}, "registered_name": None}


LAMBDA_CODE = "4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMEAAAAfABTAKkBTqkAKQHaAXhyAgAAAHICAAAA"
REFUSED = {
    "lambda": (layer("Lambda", function=[LAMBDA_CODE, None, None]), "$.config.layers[2] ('Lambda')"),
    "tf-op-lambda": (layer("TFOpLambda", function="math.add"), "a TFOpLambda layer carries code"),
    "custom module": (layer("Evil", module=PAYLOAD), f"module '{PAYLOAD}' is outside Keras"),
    "registered custom object": ({**layer("Dense", units=2), "registered_name": "my_pkg>Dense"},
                                 "registered_name 'my_pkg>Dense' names a custom object"),
    "unknown keras class": (layer("MultiHeadAttentionWithSecrets"), "not an allowed keras.layers class"),
    "unknown activation": (layer("Dense", units=2, activation="os.system"), "is not a built-in Keras activation"),
    "custom initializer": (layer("Dense", units=2, kernel_initializer={"module": PAYLOAD, "class_name": "Init",
                                                                      "config": {}, "registered_name": None}),
                           "$.config.layers[2].config.kernel_initializer"),
    "keras-looking module": (layer("Dense", module="keras.layers.evil", units=2), "is outside Keras"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_config_that_carries_code_is_refused_naming_the_object(case: str) -> None:
    bad, said = REFUSED[case]
    with pytest.raises(TaskError) as err:
        check_model_json(with_layer(bad), "task/model.json")
    assert said in str(err.value) and "task/model.json" in str(err.value)


def test_a_nested_model_is_checked_all_the_way_down() -> None:
    inner = example_config("digits_cnn_images")
    inner["module"] = "keras"
    inner["config"]["layers"].append(layer("Lambda", function=[LAMBDA_CODE, None, None]))
    with pytest.raises(TaskError, match=r"\$\.config\.layers\[2\]\.config\.layers\[\d+\] \('Lambda'\)"):
        check_model_json(with_layer(inner), "model.json")


@pytest.mark.parametrize("text", ["not json", "[]", '{"class_name": "Dense"}', json.dumps({"class_name": "Sequential",
                                                                                              "config": {"layers": [[[[[]]]]] * 2}})])
def test_what_is_not_a_model_config_is_refused(text: str) -> None:
    if text.startswith('{"class_name": "Sequential"'):
        check_model_json(text, "m.json")  # lists of lists hold no object: allowed, and Keras refuses it later
        return
    with pytest.raises(TaskError):
        check_model_json(text, "m.json")


def test_deep_nesting_is_refused_without_recursing_forever() -> None:
    deep: Any = {}
    for _ in range(200):
        deep = {"x": deep}
    with pytest.raises(TaskError, match="nested deeper"):
        check_model_json(json.dumps({"class_name": "Sequential", "config": deep}), "m.json")


@pytest.fixture()
def payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An importable module that, when imported, leaves a marker file (what an attacker's code would do)."""
    marker = tmp_path / MARKER_ENV
    (tmp_path / f"{PAYLOAD}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "import tensorflow as tf\nclass Evil(tf.keras.layers.Layer):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop(PAYLOAD, None)


def keras_file(path: Path, config: dict[str, Any]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
        archive.writestr("metadata.json", json.dumps({"keras_version": "2.14.0"}))
    return path


def evil_top() -> dict[str, Any]:
    """A .keras config whose model is the attacker's class, in the attacker's module."""
    return {"module": PAYLOAD, "class_name": "Evil", "config": {"name": "evil"}, "registered_name": None}


def evil_layer() -> dict[str, Any]:
    """A real model config with one layer from the attacker's module."""
    config = copy.deepcopy(example_config("digits_cnn_images"))
    config.update(module="keras", registered_name=None)  # as model.save() writes the top of a .keras file
    config["config"]["layers"].insert(2, layer("Evil", module=PAYLOAD))
    return config


def test_keras_safe_mode_alone_imports_the_module_a_keras_file_names(tmp_path: Path, payload: Path) -> None:
    """The threat, shown: Keras' loader with safe_mode imports the payload module."""
    import tensorflow as tf

    path = keras_file(tmp_path / "evil.keras", evil_top())
    with pytest.raises(Exception):  # noqa: B017 - whatever Keras raises after importing
        tf.keras.models.load_model(path, compile=False, safe_mode=True)
    assert payload.exists(), "Keras did not import the module (the attack this test stands for is gone)"


@pytest.mark.parametrize(("config", "said"), [(evil_top, "the top level must be a Keras model"),
                                               (evil_layer, f"module '{PAYLOAD}' is outside Keras")])
def test_a_declarative_task_refuses_the_file_before_anything_is_imported(
        tmp_path: Path, payload: Path, config: Any, said: str) -> None:
    from services.tasks.declarative import DeclarativeTask
    from services.tasks.spec import TaskFile

    keras_file(tmp_path / "evil.keras", config())
    spec = TaskFile.model_validate({"name": "evil", "model": {"keras": "evil.keras"}, "loss": "mean_squared_error",
                                    "data": {"format": "npz"}})
    with pytest.raises(TaskError, match=said):
        DeclarativeTask(spec, tmp_path)
    assert not payload.exists() and PAYLOAD not in sys.modules
