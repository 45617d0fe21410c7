"""How many CPUs this process may really use, and TensorFlow's thread pools sized to match.

TensorFlow sizes its pools by the host's cores, not by the container's CPU limit: a client pod
limited to one CPU on a 16-core node would run 16 intra-op threads that the kernel throttles.
This reads the cgroup CPU limit (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``) and falls back to the
CPUs the process may run on."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
THREAD_VARS = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def _quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup limit at ``root``, or None when there is none."""
    try:
        quota, _, period = (root / "cpu.max").read_text().partition(" ")
        if quota.strip() != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def cpu_limit(root: Path = CGROUP) -> int:
    """The CPUs this process may use: its cgroup limit rounded up, at most the CPUs it may run on."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    quota = _quota(root)
    return max(1, min(usable, math.ceil(quota))) if quota else max(1, usable)


def limit_tf_threads(threads: int = 0, root: Path = CGROUP) -> int:
    """Size TensorFlow's intra- and inter-op pools (``threads``; 0: :func:`cpu_limit`). Call it
    before TensorFlow is imported; a value already in the environment wins. Returns the count."""
    count = threads or cpu_limit(root)
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(count))
    return int(os.environ[THREAD_VARS[0]])
