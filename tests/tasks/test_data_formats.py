"""Every client data format (services/tasks/formats/): a good folder loads as the task's arrays,
and a bad one fails at start naming the file and the key, with expected vs found, before anything
trains or reaches the server. The specs are the ones the examples' models declare."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

from services.common.config import from_mapping
from services.common.data import Arrays
from services.tasks.formats import read_folder
from services.tasks.formats.checks import InputSpec, check_arrays
from services.tasks.sources import client_data, split
from services.tasks.spec import DataFormat, Label, TaskError

TABLE = InputSpec(shape=(3,), dtype="float32", label=Label(dtype="int32", classes=2))
IMAGE = InputSpec(shape=(8, 8, 1), dtype="float32", label=Label(dtype="int32", classes=10))
TOKENS = InputSpec(shape=(4,), dtype="int32", label=Label(dtype="int32", classes=5))


def fmt(**kw: Any) -> DataFormat:
    return DataFormat.model_validate(kw)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# ---- a good folder of each format ------------------------------------------------------------------
def test_csv_reads_the_feature_columns_in_order(tmp_path: Path) -> None:
    write_csv(tmp_path / "a.csv", ["f2", "y", "f1", "f0"], [[2, 1, 1, 0], [5, 0, 4, 3]])
    write_csv(tmp_path / "b.csv", ["f0", "f1", "f2", "y"], [[6, 7, 8, 1]])
    got = read_folder(tmp_path, fmt(format="csv", label="y", features=["f0", "f1", "f2"]), TABLE)
    np.testing.assert_array_equal(got.x, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(got.y, [1, 0, 1])
    assert got.x.dtype == np.float32 and got.y.dtype == np.int32


def test_npz_of_any_shape_the_spec_accepts(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", tokens=np.arange(8).reshape(2, 4), labels=np.array([3, 4]))
    got = read_folder(tmp_path, fmt(format="npz", x="tokens", y="labels"), TOKENS)
    assert got.x.shape == (2, 4) and got.x.dtype == np.int32 and list(got.y) == [3, 4]


def png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(pixels.astype(np.uint8)).numpy())


def test_image_folders_give_one_class_per_folder(tmp_path: Path) -> None:
    png(tmp_path / "3" / "a.png", np.full((8, 8, 1), 255))
    png(tmp_path / "7" / "b.png", np.zeros((8, 8, 1)))
    got = read_folder(tmp_path, fmt(format="images", class_names=[str(i) for i in range(10)]), IMAGE)
    assert got.x.shape == (2, 8, 8, 1) and list(got.y) == [3, 7]
    assert got.x.max() == pytest.approx(1.0) and got.x.min() == 0.0


def example(x: list[float], y: int) -> bytes:
    features = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=x)),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[y]))}
    return tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString()


def test_tfrecord_examples_with_a_fixed_feature_spec(tmp_path: Path) -> None:
    with tf.io.TFRecordWriter(str(tmp_path / "d.tfrecord")) as w:
        w.write(example([1, 2, 3], 1))
        w.write(example([4, 5, 6], 0))
    got = read_folder(tmp_path, fmt(format="tfrecord", feature="x", label="label"), TABLE)
    np.testing.assert_array_equal(got.x, [[1, 2, 3], [4, 5, 6]])
    assert list(got.y) == [1, 0]


def test_a_tf_data_snapshot_of_example_pairs(tmp_path: Path) -> None:
    ds = tf.data.Dataset.from_tensor_slices((np.ones((5, 3), np.float32), np.array([0, 1, 0, 1, 1], np.int32)))
    ds.save(str(tmp_path / "snap"))
    got = read_folder(tmp_path / "snap", fmt(format="snapshot"), TABLE)
    assert got.x.shape == (5, 3) and list(got.y) == [0, 1, 0, 1, 1]


# ---- bad data: refused at start, naming the file and the key ------------------------------------------
def bad_csv(tmp_path: Path, header: list[str], rows: list[list[Any]]) -> str:
    write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(TaskError) as err:
        read_folder(tmp_path, fmt(format="csv", label="y"), TABLE)
    assert str(tmp_path / "bad.csv") in str(err.value)
    return str(err.value)


def test_csv_missing_label_column(tmp_path: Path) -> None:
    assert "no label column 'y'" in bad_csv(tmp_path, ["a", "b", "c"], [[1, 2, 3]])


def test_csv_missing_feature_column(tmp_path: Path) -> None:
    write_csv(tmp_path / "bad.csv", ["a", "b", "y"], [[1, 2, 0]])
    with pytest.raises(TaskError, match=r"bad.csv: missing feature column\(s\) 'c'"):
        read_folder(tmp_path, fmt(format="csv", label="y", features=["a", "b", "c"]), TABLE)


def test_csv_wrong_number_of_features_says_expected_and_found(tmp_path: Path) -> None:
    said = bad_csv(tmp_path, ["a", "b", "y"], [[1, 2, 0]])
    assert "expected (N, 3) float32, found (1, 2)" in said


def test_csv_non_numeric_cell_names_row_and_column(tmp_path: Path) -> None:
    assert "row 3, column 'b': 'oops' is not a number" in bad_csv(tmp_path, ["a", "b", "c", "y"],
                                                                 [[1, 2, 3, 0], [1, "oops", 3, 1]])


def test_label_out_of_range(tmp_path: Path) -> None:
    assert "class ids must be in 0..1, found 0..2" in bad_csv(tmp_path, ["a", "b", "c", "y"],
                                                              [[1, 2, 3, 0], [1, 2, 3, 2]])


def test_fractional_class_label(tmp_path: Path) -> None:
    assert "expected integer class ids" in bad_csv(tmp_path, ["a", "b", "c", "y"], [[1, 2, 3, 0.5]])


def test_nan_input(tmp_path: Path) -> None:
    assert "NaN or infinite" in bad_csv(tmp_path, ["a", "b", "c", "y"], [[1, "nan", 3, 0]])


def test_empty_shard(tmp_path: Path) -> None:
    assert "no examples" in bad_csv(tmp_path, ["a", "b", "c", "y"], [])


def test_npz_wrong_dtype_and_shape(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", x=np.array([["a", "b", "c"]]), y=np.array([0]))
    with pytest.raises(TaskError, match=r"s.npz: input x: expected numbers \(float32\), found <U1"):
        read_folder(tmp_path, fmt(format="npz"), TABLE)
    np.savez(tmp_path / "s.npz", x=np.ones((2, 4)), y=np.array([0, 1]))
    with pytest.raises(TaskError, match=r"s.npz: input x: expected \(N, 3\) float32, found \(2, 4\)"):
        read_folder(tmp_path, fmt(format="npz"), TABLE)


def test_npz_missing_array_and_pickles_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", inputs=np.ones((2, 3)), y=np.array([0, 1]))
    with pytest.raises(TaskError, match=r"needs arrays 'x' and 'y', has \['inputs', 'y'\]"):
        read_folder(tmp_path, fmt(format="npz"), TABLE)
    np.savez(tmp_path / "s.npz", x=np.array([{"a": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(TaskError, match="not a readable .npz"):
        read_folder(tmp_path, fmt(format="npz"), TABLE)


def test_image_of_another_size_is_not_resized(tmp_path: Path) -> None:
    png(tmp_path / "1" / "big.png", np.zeros((9, 8, 1)))
    with pytest.raises(TaskError, match=r"big.png: image is \(9, 8, 1\), the model's input is \(N, 8, 8, 1\)"):
        read_folder(tmp_path, fmt(format="images"), IMAGE)


def test_image_folder_not_in_class_names_and_broken_files(tmp_path: Path) -> None:
    png(tmp_path / "cat" / "a.png", np.zeros((8, 8, 1)))
    with pytest.raises(TaskError, match="class folder.s. cat are not in data.class_names"):
        read_folder(tmp_path, fmt(format="images", class_names=["0", "1"]), IMAGE)
    (tmp_path / "cat" / "a.png").write_bytes(b"not a png")
    with pytest.raises(TaskError, match="a.png: not a readable PNG/JPEG image"):
        read_folder(tmp_path, fmt(format="images"), IMAGE)


def test_tfrecord_without_the_feature(tmp_path: Path) -> None:
    with tf.io.TFRecordWriter(str(tmp_path / "d.tfrecord")) as w:
        w.write(example([1, 2], 1))
    with pytest.raises(TaskError, match=r"d.tfrecord: a record does not hold feature 'x' \(3 values\)"):
        read_folder(tmp_path, fmt(format="tfrecord", feature="x", label="label"), TABLE)


def test_snapshot_of_another_structure(tmp_path: Path) -> None:
    tf.data.Dataset.from_tensor_slices(np.ones((2, 3), np.float32)).save(str(tmp_path / "snap"))
    with pytest.raises(TaskError, match=r"snapshot elements must be \(x, y\) tensor pairs"):
        read_folder(tmp_path / "snap", fmt(format="snapshot"), TABLE)


def test_a_folder_without_data_files(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"no \.csv files"):
        read_folder(tmp_path, fmt(format="csv"), TABLE)
    with pytest.raises(TaskError, match="no such data folder"):
        read_folder(tmp_path / "absent", fmt(format="csv"), TABLE)


# ---- where a client's data comes from ----------------------------------------------------------------
def test_a_missing_shard_folder_says_what_the_data_path_holds(tmp_path: Path) -> None:
    from support.digits import task

    (tmp_path / "shard-0").mkdir()
    cfg = from_mapping({"data": {"source": "files", "path": str(tmp_path)}})
    with pytest.raises(TaskError, match="shard-3: no such shard folder .* must hold shard-0 .. shard-3; found shard-0"):
        client_data(cfg, task(), 3, 4)


def test_the_eval_split_is_held_out_deterministically() -> None:
    arrays = Arrays(np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10))
    a, b = split(arrays, 0.3, seed=1, where="w"), split(arrays, 0.3, seed=1, where="w")
    assert a.eval is not None and len(a.eval) == 3 and len(a.train) == 7
    np.testing.assert_array_equal(a.eval.y, b.eval.y)  # type: ignore[union-attr]
    assert set(a.eval.y) | set(a.train.y) == set(range(10)) and not set(a.eval.y) & set(a.train.y)
    with pytest.raises(TaskError, match="at least 2"):
        split(Arrays(arrays.x[:1], arrays.y[:1]), 0.3, seed=1, where="w")


def test_check_arrays_refuses_mismatched_counts() -> None:
    with pytest.raises(TaskError, match="3 inputs but 2 labels"):
        check_arrays(Arrays(np.ones((3, 3)), np.zeros(2)), TABLE, "w")
