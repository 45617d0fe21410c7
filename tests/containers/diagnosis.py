"""What a failed container test prints so the failure can be told apart without rerunning it: each
container's state and whole log (condensed), what a cluster's Pods resolve a name to and whether they
reach a port from where they stand, and the firewall rules in play (tests/containers/kube.py's
``separated`` and podman's own port publishing)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from kube import Play, run

# Run in a container of the cluster (the image's Python): resolve a name as the services' resolver
# sees /etc/hosts and DNS, and open a TCP connection to it.
PROBE = """import socket, sys, time
name, port = sys.argv[1], int(sys.argv[2])
try:
    addrs = sorted({a[4][0] for a in socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)})
    print("resolves", name, "->", ", ".join(addrs))
except OSError as exc:
    print("cannot resolve", name, ":", exc); sys.exit(0)
hosts = [line.strip() for line in open("/etc/hosts") if name in line.split()]
print("/etc/hosts:", hosts or "no entry")
start = time.monotonic()
try:
    socket.create_connection((name, port), 5).close()
    print(f"tcp {name}:{port} connects ({time.monotonic() - start:.2f}s)")
except OSError as exc:
    print(f"tcp {name}:{port} fails after {time.monotonic() - start:.2f}s: {exc!r}")
"""


def condensed_log(text: str, keep: int = 4) -> str:
    """A log with each kind of line (a JSON line's ``msg``, else the line) cut to its first and last
    ``keep`` occurrences, in order, and a count of each kind cut: a flood of one message (a refused
    silo, per-round lines) keeps the rare lines that say what happened."""
    lines = text.splitlines()
    kinds = [_kind(line) for line in lines]
    totals = Counter(kinds)
    seen: Counter[str] = Counter()
    out = []
    for line, kind in zip(lines, kinds, strict=True):
        seen[kind] += 1
        if seen[kind] <= keep or seen[kind] > totals[kind] - keep:
            out.append(line)
    cut = {k: n - 2 * keep for k, n in totals.items() if n > 2 * keep}
    if cut:
        out.append("[cut: " + "; ".join(f"{n} more of {k!r}" for k, n in cut.items()) + "]")
    return "\n".join(out)


def _kind(line: str) -> str:
    try:
        entry = json.loads(line)
    except ValueError:
        return line[:80]
    return str(entry.get("msg", line))[:80] if isinstance(entry, dict) else line[:80]


def containers(name: str, play: Play) -> str:
    """Every workload container of ``play`` (cluster ``name``): state, restarts, exit code and its log."""
    parts = []
    found = play.containers()
    for c in found:
        s = c.state
        parts.append(f"--- {name}: {c.name} ({s.get('Status')}, restarts {c.restarts}, exit {s.get('ExitCode')}, "
                     f"started {s.get('StartedAt')}, finished {s.get('FinishedAt')}, ip {c.ip})\n"
                     + condensed_log(play.logs(c.name, tail=None)))
    return "\n".join(parts) if found else f"--- {name}: no containers"


def reach(name: str, play: Play, host: str, port: int) -> str:
    """What a running container of ``play`` resolves ``host`` to and whether host:port connects from it."""
    running = [c for c in play.containers() if c.state.get("Status") == "running"]
    if not running:
        return f"--- {name}: no running container to probe from"
    done = run(["podman", "exec", running[0].name, "/opt/venv/bin/python", "-c", PROBE, host, str(port)],
               timeout=60, check=False)
    return f"--- {name} (from {running[0].name}):\n{(done.stdout + done.stderr).strip()}"


def firewall(added: Iterable[list[str]], needles: Iterable[str]) -> str:
    """The rules the harness added (as added) and the live filter and nat rules that mention any of
    ``needles`` (subnets, addresses, ports), with the FORWARD chain whole: its order decides."""
    out = ["--- rules the harness added (iptables -I):", *(" ".join(rule) for rule in added)]
    out += ["--- iptables -S FORWARD:", run(["iptables", "-S", "FORWARD"], check=False).stdout.strip()]
    needles = [n for n in needles if n]
    for table in ("filter", "nat"):
        live = run(["iptables", "-t", table, "-S"], check=False).stdout.splitlines()
        out += [f"--- iptables -t {table} -S, lines naming {', '.join(needles)}:",
                *(line for line in live if any(n in line for n in needles))]
    return "\n".join(out)
