"""Prometheus text endpoint of the server (``server.metrics_port``): rounds completed, whether
training has finished, clients connected, round duration histogram, bytes in/out, results
rejected by reason and, in a cross-silo federation, per silo: results, examples and weight
accepted, and the slowest client's seconds in the last round."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SILO_METRICS = (  # (name, key in Telemetry.silos, type, help)
    ("tff_k8s_silo_results_total", "results", "counter", "Client results accepted from each silo."),
    ("tff_k8s_silo_examples_total", "num_examples", "counter", "Training examples behind each silo's accepted results."),
    ("tff_k8s_silo_weight_total", "weight", "counter", "Sum of the update weights accepted from each silo."),
    ("tff_k8s_silo_round_seconds", "seconds_max", "gauge", "The slowest client of each silo in the last applied round."),
)
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Telemetry:
    def __init__(self, connected: Callable[[], int] = lambda: 0) -> None:
        self._lock = threading.Lock()
        self._connected = connected
        self.rounds_completed = 0
        self.rounds_retried = 0
        self.finished = False
        self.bytes_in = 0
        self.bytes_out = 0
        self.rejected: Counter[str] = Counter()
        self._buckets = [0] * len(BUCKETS)
        self._duration_sum = 0.0
        self._duration_count = 0
        self.silos: dict[str, dict[str, float]] = {}  # silo -> totals, and the last round's seconds

    def round_done(self, seconds: float) -> None:
        with self._lock:
            self.rounds_completed += 1
            self._duration_sum += seconds
            self._duration_count += 1
            for i in range(bisect.bisect_left(BUCKETS, seconds), len(BUCKETS)):
                self._buckets[i] += 1

    def training_finished(self) -> None:
        with self._lock:
            self.finished = True

    def round_retried(self) -> None:
        with self._lock:
            self.rounds_retried += 1

    def silo_round(self, rows: dict[str, dict[str, float]]) -> None:
        """An applied round's per-silo rows (services/server/rounds.py's silo_rows)."""
        with self._lock:
            for silo, row in rows.items():
                total = self.silos.setdefault(silo, {"results": 0, "num_examples": 0.0})
                total["results"] += row["clients"]
                total["num_examples"] += row["num_examples"]
                if "weight" in row:  # not with secure aggregation
                    total["weight"] = total.get("weight", 0.0) + row["weight"]
                total["seconds_max"] = row["seconds_max"]

    def add_bytes(self, *, received: int = 0, sent: int = 0) -> None:
        with self._lock:
            self.bytes_in += received
            self.bytes_out += sent

    def reject(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def render(self) -> str:
        with self._lock:
            lines = [
                "# HELP tff_k8s_rounds_completed_total Federated rounds applied to the global model.",
                "# TYPE tff_k8s_rounds_completed_total counter",
                f"tff_k8s_rounds_completed_total {self.rounds_completed}",
                "# HELP tff_k8s_rounds_retried_total Rounds retried for lack of results.",
                "# TYPE tff_k8s_rounds_retried_total counter",
                f"tff_k8s_rounds_retried_total {self.rounds_retried}",
                "# HELP tff_k8s_training_finished 1 once every round of the run is applied and the model exported.",
                "# TYPE tff_k8s_training_finished gauge",
                f"tff_k8s_training_finished {int(self.finished)}",
                "# HELP tff_k8s_clients_connected Clients seen recently.",
                "# TYPE tff_k8s_clients_connected gauge",
                f"tff_k8s_clients_connected {self._connected()}",
                "# HELP tff_k8s_bytes_received_total Payload bytes received from clients.",
                "# TYPE tff_k8s_bytes_received_total counter",
                f"tff_k8s_bytes_received_total {self.bytes_in}",
                "# HELP tff_k8s_bytes_sent_total Payload bytes sent to clients.",
                "# TYPE tff_k8s_bytes_sent_total counter",
                f"tff_k8s_bytes_sent_total {self.bytes_out}",
                "# HELP tff_k8s_results_rejected_total Client results rejected, by reason.",
                "# TYPE tff_k8s_results_rejected_total counter",
            ]
            lines += [f'tff_k8s_results_rejected_total{{reason="{r}"}} {n}' for r, n in sorted(self.rejected.items())]
            lines += [
                "# HELP tff_k8s_round_duration_seconds Wall time of applied rounds.",
                "# TYPE tff_k8s_round_duration_seconds histogram",
            ]
            lines += [f'tff_k8s_round_duration_seconds_bucket{{le="{b}"}} {n}' for b, n in zip(BUCKETS, self._buckets, strict=True)]
            lines += [
                f'tff_k8s_round_duration_seconds_bucket{{le="+Inf"}} {self._duration_count}',
                f"tff_k8s_round_duration_seconds_sum {self._duration_sum}",
                f"tff_k8s_round_duration_seconds_count {self._duration_count}",
            ]
            for metric, key, kind, help_text in SILO_METRICS:
                values = [f'{metric}{{silo="{silo}"}} {row[key]}' for silo, row in sorted(self.silos.items()) if key in row]
                if values:
                    lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}", *values]
        return "\n".join(lines) + "\n"

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        telemetry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = telemetry.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer((host, port), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
        return httpd


def memory_mb() -> dict[str, float]:
    """This process's resident memory now and at its peak (Linux ``/proc/self/status``), in MiB."""
    out: dict[str, float] = {}
    try:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = round(int(value.split()[0]) / 1024, 1)
    except OSError:
        pass
    return out
