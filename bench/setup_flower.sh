#!/usr/bin/env bash
# Create bench/.venv-flower: Flower's own environment (it needs protobuf >= 5; the project's
# TF 2.14 environment caps protobuf below 5). Installs exactly what bench/flower/uv.lock pins.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
UV="${UV:-$(command -v uv || echo "$HOME/.local/bin/uv")}"
UV_PROJECT_ENVIRONMENT="$root/bench/.venv-flower" \
  "$UV" sync --frozen --project "$root/bench/flower" --python 3.11
"$root/bench/.venv-flower/bin/flwr" --version
