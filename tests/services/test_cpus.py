"""services/common/cpus.py: the CPUs a container may use (cgroup v2 / v1 limits) and TensorFlow's
thread pools sized to match."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common import cpus

USABLE = len(os.sched_getaffinity(0))


def v2(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cpu.max").write_text(text)
    return tmp_path


def v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


@pytest.mark.parametrize(("text", "expected"), [
    ("100000 100000\n", 1), ("50000 100000\n", 1), ("150000 100000\n", min(2, USABLE)),
    ("max 100000\n", USABLE), ("100000000 100000\n", USABLE),  # a limit above the CPUs there are
])
def test_cgroup_v2_limit(tmp_path: Path, text: str, expected: int) -> None:
    assert cpus.cpu_limit(v2(tmp_path, text)) == expected


@pytest.mark.parametrize(("quota", "expected"), [(100000, 1), (25000, 1), (-1, USABLE)])
def test_cgroup_v1_limit(tmp_path: Path, quota: int, expected: int) -> None:
    assert cpus.cpu_limit(v1(tmp_path, quota, 100000)) == expected


def test_no_cgroup_files_means_the_usable_cpus(tmp_path: Path) -> None:
    assert cpus.cpu_limit(tmp_path) == USABLE
    assert cpus.cpu_limit(v2(tmp_path, "garbage")) == USABLE


def test_thread_pools_follow_the_limit_unless_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in cpus.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    assert cpus.limit_tf_threads(0, v2(tmp_path, "100000 100000")) == 1
    assert [os.environ[v] for v in cpus.THREAD_VARS] == ["1", "1"]
    for var in cpus.THREAD_VARS:
        monkeypatch.delenv(var)
    assert cpus.limit_tf_threads(3, tmp_path) == 3  # configured: the cgroup is not consulted
    monkeypatch.setenv(cpus.THREAD_VARS[0], "7")  # the environment wins
    assert cpus.limit_tf_threads(2, tmp_path) == 7
