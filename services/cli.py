"""``tff-k8s``: the project's one command line. Subcommands import their heavy modules lazily."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

USAGE = """usage: tff-k8s <command> [options]

commands:
  local    run a federation (1 server + N clients) on this machine, on loopback
  render   write the Kubernetes manifests a stack declares as YAML (for review and scanners)
  task     `task check --task T [--data D]`: load a learning task and its data, run one local step, say what
           it needs (docs/tasks.md)

run `tff-k8s <command> --help` for a command's options."""


def _local(argv: Sequence[str]) -> int:
    from services.runner.local import main

    return main(argv)


def _render(argv: Sequence[str]) -> int:
    from infra.render import main

    return main(argv)


def _task(argv: Sequence[str]) -> int:
    if not argv or argv[0] != "check":
        print("usage: tff-k8s task check --task FILE_OR_MODULE [--data DIR] [--set key=value ...]", file=sys.stderr)
        return 2
    from services.tasks.check import main

    return main(argv[1:])


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {"local": _local, "render": _render, "task": _task}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"tff-k8s: unknown command {args[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
