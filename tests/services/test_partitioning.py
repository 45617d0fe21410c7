"""Client data: the digits split and its shards (every example in exactly one shard, none empty,
reproducible per seed, Dirichlet skews labels), and a client's own .npz files (accepted only when
they are exactly what the model takes; never unpickled)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.data import (
    NUM_CLASSES,
    NUM_FEATURES,
    DataError,
    digits_shard,
    load_digits_split,
    load_npz_dir,
    partition,
)


@pytest.fixture(scope="module")
def digits() -> tuple:
    return load_digits_split(0.2, seed=0)


def assert_exact_cover(shards: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(shards)
    assert len(joined) == n, "an index is missing or repeated"
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert all(len(s) > 0 for s in shards), [len(s) for s in shards]


def mean_label_entropy(labels: np.ndarray, shards: list[np.ndarray]) -> float:
    out = []
    for s in shards:
        p = np.bincount(labels[s], minlength=NUM_CLASSES) / len(s)
        p = p[p > 0]
        out.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(out))


# ---- partition ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
@pytest.mark.parametrize("num_shards", [1, 2, 7, 10, 50])
def test_partition_covers_every_index_once(digits: tuple, scheme: str, num_shards: int) -> None:
    labels = digits[0].y
    assert_exact_cover(partition(labels, num_shards, scheme=scheme, alpha=0.5, seed=1), len(labels))


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, NUM_CLASSES - 1), min_size=1, max_size=300).map(np.asarray),
    shard_fraction=st.floats(0, 1),
    scheme=st.sampled_from(["iid", "dirichlet"]),
    alpha=st.floats(1e-3, 100),
    seed=st.integers(0, 2**32 - 1),
)
def test_partition_exact_cover_property(labels: np.ndarray, shard_fraction: float, scheme: str, alpha: float,
                                        seed: int) -> None:
    num_shards = max(1, round(shard_fraction * len(labels)))
    shards = partition(labels, num_shards, scheme=scheme, alpha=alpha, seed=seed)
    assert len(shards) == num_shards
    assert_exact_cover(shards, len(labels))
    assert all(np.all(np.diff(s) > 0) for s in shards)  # sorted, so shard order is stable


def test_iid_shards_are_even(digits: tuple) -> None:
    sizes = [len(s) for s in partition(digits[0].y, 7, scheme="iid", alpha=1, seed=0)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partition_is_deterministic_per_seed(digits: tuple, scheme: str) -> None:
    labels = digits[0].y
    a = partition(labels, 5, scheme=scheme, alpha=0.3, seed=42)
    b = partition(labels, 5, scheme=scheme, alpha=0.3, seed=42)
    c = partition(labels, 5, scheme=scheme, alpha=0.3, seed=43)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_small_alpha_skews_labels_more_than_iid(digits: tuple) -> None:
    labels = digits[0].y
    entropies = {}
    for name, scheme, alpha in [("iid", "iid", 1.0), ("alpha100", "dirichlet", 100.0), ("alpha0.1", "dirichlet", 0.1)]:
        entropies[name] = np.mean([mean_label_entropy(labels, partition(labels, 10, scheme=scheme, alpha=alpha,
                                                                             seed=s)) for s in range(5)])
    # iid shards of ~140 examples hold nearly all 10 classes evenly (max entropy ln 10 ~ 2.30).
    assert entropies["iid"] > 2.1
    assert entropies["alpha100"] > 2.0
    assert entropies["alpha0.1"] < entropies["iid"] - 0.8, entropies


@pytest.mark.parametrize("num_shards", [0, -1, 11])
def test_bad_num_shards(num_shards: int) -> None:
    with pytest.raises(DataError, match="num_shards"):
        partition(np.zeros(10, dtype=int), num_shards, scheme="iid", alpha=1, seed=0)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_bad_alpha(alpha: float) -> None:
    with pytest.raises(DataError, match="alpha"):
        partition(np.zeros(10, dtype=int), 2, scheme="dirichlet", alpha=alpha, seed=0)


def test_bad_scheme() -> None:
    with pytest.raises(DataError, match="'shards'"):
        partition(np.zeros(10, dtype=int), 2, scheme="shards", alpha=1, seed=0)


# ---- the digits ---------------------------------------------------------------------------------
def test_digits_split_sizes_and_range(digits: tuple) -> None:
    train, held_out = digits
    total = len(train) + len(held_out)
    assert total == 1797  # sklearn's bundled digits
    assert len(held_out) == round(total * 0.2)
    for part in (train, held_out):
        assert part.x.dtype == np.float32 and part.y.dtype == np.int32
        assert part.x.shape == (len(part), NUM_FEATURES)
        assert part.x.min() >= 0 and part.x.max() <= 1
        assert part.x.max() == 1  # scaled, not clipped: the brightest pixel maps to 1
        assert set(np.unique(part.y)) == set(range(NUM_CLASSES))


def test_digits_split_is_seeded_and_disjoint() -> None:
    a_train, a_eval = load_digits_split(0.1, seed=3)
    b_train, b_eval = load_digits_split(0.1, seed=3)
    c_train, _ = load_digits_split(0.1, seed=4)
    assert np.array_equal(a_train.x, b_train.x) and np.array_equal(a_eval.y, b_eval.y)
    assert not np.array_equal(a_train.x, c_train.x)
    assert len(a_eval) == round(1797 * 0.1)
    rows = {r.tobytes() for r in a_train.x}
    # sklearn's digits hold a few duplicate images; nearly all held-out rows must be unseen in training.
    assert sum(r.tobytes() in rows for r in a_eval.x) < len(a_eval) * 0.05


def test_tiny_eval_fraction_keeps_one_example() -> None:
    _, held_out = load_digits_split(1e-6, seed=0)
    assert len(held_out) == 1


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_digits_shards_cover_the_training_split(digits: tuple, scheme: str) -> None:
    train, _ = digits
    shards = [digits_shard(i, 4, scheme=scheme, alpha=0.5, eval_fraction=0.2, seed=0) for i in range(4)]
    assert sum(len(s) for s in shards) == len(train)
    assert np.array_equal(np.sort(np.concatenate([s.y for s in shards])), np.sort(train.y))
    assert all(s.x.shape == (len(s), NUM_FEATURES) for s in shards)


@pytest.mark.parametrize("index", [-1, 4, 100])
def test_digits_shard_index_bounds(index: int) -> None:
    with pytest.raises(DataError, match="shard_index"):
        digits_shard(index, 4, scheme="iid", alpha=1, eval_fraction=0.2, seed=0)


# ---- a client's own .npz files --------------------------------------------------------------------
def write_npz(path: Path, **arrays: object) -> Path:
    np.savez(path, **arrays)
    return path


def good_arrays(n: int, rng_seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rng_seed)
    return {"x": rng.random((n, NUM_FEATURES), dtype=np.float32), "y": rng.integers(0, NUM_CLASSES, n)}


def test_npz_dir_happy_path(tmp_path: Path) -> None:
    a, b = good_arrays(5, 1), good_arrays(3, 2)
    write_npz(tmp_path / "b.npz", **b)
    write_npz(tmp_path / "a.npz", **a)
    write_npz(tmp_path / "c.npz", x=b["x"].reshape(3, 8, 8), y=b["y"].astype(np.uint8))  # 8x8 images flatten
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_npz_dir(tmp_path)
    assert data.x.dtype == np.float32 and data.y.dtype == np.int32
    assert data.x.shape == (11, NUM_FEATURES) and len(data) == 11
    # files in name order
    assert np.array_equal(data.x, np.concatenate([a["x"], b["x"], b["x"]]))
    assert np.array_equal(data.y, np.concatenate([a["y"], b["y"], b["y"]]))


def test_npz_dir_accepts_bounds(tmp_path: Path) -> None:
    write_npz(tmp_path / "a.npz", x=np.array([[0.0] * 64, [1.0] * 64]), y=np.array([0, 9]))
    assert len(load_npz_dir(tmp_path)) == 2


def test_npz_dir_without_files(tmp_path: Path) -> None:
    (tmp_path / "data.npy").write_bytes(b"")
    with pytest.raises(DataError, match="no .npz files"):
        load_npz_dir(tmp_path)
    with pytest.raises(DataError, match="no .npz files"):
        load_npz_dir(tmp_path / "absent")


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((2, 64))}, "needs arrays 'x' and 'y'"),
        ({"y": np.zeros(2, dtype=int)}, "needs arrays 'x' and 'y'"),
        ({"features": np.zeros((2, 64)), "labels": np.zeros(2, dtype=int)}, "needs arrays"),
        ({"x": np.zeros((2, 63)), "y": np.zeros(2, dtype=int)}, r"\(N, 64\)"),
        ({"x": np.zeros((2, 65)), "y": np.zeros(2, dtype=int)}, r"\(N, 64\)"),
        ({"x": np.zeros((3, 64)), "y": np.zeros(2, dtype=int)}, r"\(N, 64\)"),
        ({"x": np.full((2, 64), 16.0), "y": np.zeros(2, dtype=int)}, r"\[0, 1\]"),
        ({"x": np.full((2, 64), -0.1), "y": np.zeros(2, dtype=int)}, r"\[0, 1\]"),
        ({"x": np.full((2, 64), np.nan), "y": np.zeros(2, dtype=int)}, "finite"),
        ({"x": np.full((2, 64), np.inf), "y": np.zeros(2, dtype=int)}, "finite"),
        ({"x": np.zeros((2, 64)), "y": np.array([0, 10])}, "0..9"),
        ({"x": np.zeros((2, 64)), "y": np.array([-1, 0])}, "0..9"),
        ({"x": np.zeros((2, 64)), "y": np.array([0.0, 1.0])}, "integer labels"),
        ({"x": np.zeros((2, 64)), "y": np.array([True, False])}, "integer labels"),
    ],
)
def test_npz_rejections_name_the_file(tmp_path: Path, arrays: dict, match: str) -> None:
    write_npz(tmp_path / "a.npz", **good_arrays(2))
    bad = write_npz(tmp_path / "b.npz", **arrays)
    with pytest.raises(DataError, match=match) as info:
        load_npz_dir(tmp_path)
    assert str(bad) in str(info.value)


def _pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


class _Boom:
    """Unpickling this creates a file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickled_object_arrays_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.array([np.zeros(64), None], dtype=object), y=np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npz_dir(tmp_path)


def test_pickle_payloads_are_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # A raw pickle stream and an object array whose element would run code when unpickled.
    (data_dir / "a.npz").write_bytes(pickle.dumps({"x": _Boom(marker)}))
    with pytest.raises(ValueError):
        load_npz_dir(data_dir)
    (data_dir / "a.npz").unlink()
    np.savez(data_dir / "b.npz", x=np.array([_Boom(marker), None], dtype=object), y=np.zeros(2, dtype=int))
    with pytest.raises(ValueError):
        load_npz_dir(data_dir)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: b"", id="empty-file"),
        pytest.param(lambda: b"PK\x03\x04 not really a zip", id="garbage"),
        pytest.param(lambda: _npz_bytes(**good_arrays(4))[:100], id="truncated-zip"),
        pytest.param(_pickled_npy, id="pickled-npy-named-npz"),
        pytest.param(lambda: pickle.dumps({"x": 1}), id="pickle-stream"),
        pytest.param(lambda: _npz_bytes(x=np.array([np.zeros(64), None], dtype=object), y=np.zeros(2, dtype=int)),
                     id="object-array-in-npz"),
        pytest.param(lambda: _npz_bytes(x=np.zeros((0, 64), np.float32), y=np.zeros(0, dtype=int)), id="zero-examples"),
        pytest.param(lambda: _npz_bytes(x=np.float32(0.5), y=np.int64(1)), id="0-d-arrays"),
        pytest.param(lambda: _npz_bytes(x=np.array([["a"] * 64]), y=np.zeros(1, dtype=int)), id="string-x"),
        pytest.param(lambda: _npy_bytes(np.zeros((2, 64))), id="plain-npy-named-npz"),
    ],
)
def test_unusable_files_are_data_errors(tmp_path: Path, content) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "a.npz"
    bad.write_bytes(content())
    with pytest.raises(DataError) as info:
        load_npz_dir(tmp_path)
    assert str(bad) in str(info.value)


def test_two_dimensional_labels_are_refused(tmp_path: Path) -> None:
    write_npz(tmp_path / "a.npz", x=np.zeros((3, 64)), y=np.zeros((3, 1), dtype=int))
    with pytest.raises(DataError, match=r"y \(N,\)"):
        load_npz_dir(tmp_path)


def _npz_bytes(**arrays: object) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
