"""The server's Prometheus endpoint: the documented metric names, a well-formed cumulative histogram,
rejections labelled by reason, served at /metrics and nowhere else."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from services.server.telemetry import BUCKETS, Telemetry

METRICS = {
    "tff_k8s_rounds_completed_total": "counter",
    "tff_k8s_rounds_retried_total": "counter",
    "tff_k8s_training_finished": "gauge",
    "tff_k8s_clients_connected": "gauge",
    "tff_k8s_bytes_received_total": "counter",
    "tff_k8s_bytes_sent_total": "counter",
    "tff_k8s_results_rejected_total": "counter",
    "tff_k8s_round_duration_seconds": "histogram",
}
SAMPLE = re.compile(r'^([a-z0-9_]+)(?:\{([a-z]+)="([^"]*)"\})? (\S+)$')


def samples(text: str) -> dict[tuple[str, str | None], float]:
    """``{(name, label value or None): value}`` for every sample line; fails on a malformed line."""
    out: dict[tuple[str, str | None], float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"malformed sample line: {line!r}"
        key = (m.group(1), m.group(3))
        assert key not in out, f"duplicate sample {key}"
        out[key] = float(m.group(4))
    return out


def test_documented_metrics_are_declared() -> None:
    text = Telemetry().render()
    assert text.endswith("\n")
    for name, kind in METRICS.items():
        assert f"# TYPE {name} {kind}\n" in text
        assert f"# HELP {name} " in text
    declared = set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))
    assert declared == set(METRICS)


def test_fresh_values_are_zero() -> None:
    s = samples(Telemetry().render())
    for name in ("tff_k8s_rounds_completed_total", "tff_k8s_rounds_retried_total", "tff_k8s_clients_connected",
                 "tff_k8s_bytes_received_total", "tff_k8s_bytes_sent_total",
                 "tff_k8s_round_duration_seconds_count", "tff_k8s_round_duration_seconds_sum"):
        assert s[(name, None)] == 0, name
    assert not any(name == "tff_k8s_results_rejected_total" for name, _ in s)


def test_counters_and_gauge() -> None:
    connected = [3]
    t = Telemetry(connected=lambda: connected[0])
    t.round_retried()
    t.add_bytes(received=100)
    t.add_bytes(sent=40)
    t.add_bytes(received=5, sent=2)
    s = samples(t.render())
    assert s[("tff_k8s_rounds_retried_total", None)] == 1
    assert s[("tff_k8s_bytes_received_total", None)] == 105
    assert s[("tff_k8s_bytes_sent_total", None)] == 42
    assert s[("tff_k8s_clients_connected", None)] == 3
    connected[0] = 7  # a gauge is read at scrape time
    assert samples(t.render())[("tff_k8s_clients_connected", None)] == 7


def test_rejections_are_labelled_by_reason() -> None:
    t = Telemetry()
    for reason in ["stale", "invalid", "stale", "unauthenticated", "stale"]:
        t.reject(reason)
    s = samples(t.render())
    rejected = {label: v for (name, label), v in s.items() if name == "tff_k8s_results_rejected_total"}
    assert rejected == {"stale": 3, "invalid": 1, "unauthenticated": 1}


@pytest.mark.parametrize(
    "durations",
    [[0.01], [0.05], [0.07, 0.3, 3.0], [1, 1, 1], [700.0], [0.05, 0.1, 600, 601], [b for b in BUCKETS]],
)
def test_histogram_is_cumulative_with_right_count_and_sum(durations: list[float]) -> None:
    t = Telemetry()
    for d in durations:
        t.round_done(d)
    s = samples(t.render())
    bucket = {label: v for (name, label), v in s.items() if name == "tff_k8s_round_duration_seconds_bucket"}
    assert list(bucket) == [str(b) for b in BUCKETS] + ["+Inf"]  # in order, +Inf last
    for le in BUCKETS:  # each bucket counts the observations <= its bound
        assert bucket[str(le)] == sum(d <= le for d in durations), le
    assert bucket["+Inf"] == len(durations)
    values = list(bucket.values())
    assert values == sorted(values)
    assert s[("tff_k8s_round_duration_seconds_count", None)] == len(durations)
    assert s[("tff_k8s_round_duration_seconds_sum", None)] == pytest.approx(sum(durations))
    assert s[("tff_k8s_rounds_completed_total", None)] == len(durations)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Telemetry, str]]:
    t = Telemetry(connected=lambda: 2)
    httpd = t.serve("127.0.0.1", 0)
    try:
        host, port = httpd.server_address[:2]
        yield t, f"http://{host}:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.timeout(30)
def test_http_endpoint_serves_metrics(server: tuple[Telemetry, str]) -> None:
    t, base = server
    t.round_done(0.2)
    t.reject("duplicate")
    for path in ("/metrics", "/metrics?x=1"):
        with urllib.request.urlopen(base + path, timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            body = resp.read().decode()
        assert body == t.render()
        assert samples(body)[("tff_k8s_results_rejected_total", "duplicate")] == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/", "/metrics/", "/metricsx", "/healthz"])
def test_http_endpoint_404s_elsewhere(server: tuple[Telemetry, str], path: str) -> None:
    _, base = server
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(base + path, timeout=5)
    assert info.value.code == 404


def test_finished_gauge_turns_on_once_training_finishes() -> None:
    telemetry = Telemetry()
    assert samples(telemetry.render())[("tff_k8s_training_finished", None)] == 0
    telemetry.training_finished()
    assert samples(telemetry.render())[("tff_k8s_training_finished", None)] == 1
