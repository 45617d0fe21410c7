"""Reading a Prometheus text endpoint (the server's ``/metrics``) in tests."""

from __future__ import annotations

import urllib.request


def metric(address: str, name: str, labels: str = "") -> float:
    """One value from ``http://<address>/metrics`` (``address`` host:port); ``labels`` as written,
    e.g. ``{reason="x"}``."""
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{labels} "):
            return float(line.split()[1])
    raise AssertionError(f"{name}{labels} not on {address}/metrics")
