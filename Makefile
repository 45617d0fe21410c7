# The README's two commands: `make demo` runs a local federation, `make test` runs the tests.
# Both bootstrap uv from PyPI when it is absent and install exactly what uv.lock pins.
SHELL := /bin/bash
# uv from PATH, else the copy `make uv` installs from PyPI into this Python (run as `python3 -m uv`).
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
RUN := $(UV) run --frozen
ARGS ?=

.PHONY: demo test test-fast e2e e2e-setup sync uv lint
uv:
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv

sync: uv
	$(UV) sync --frozen

demo: sync
	$(RUN) tff-k8s local --output-dir out/demo $(ARGS)

test: sync
	$(RUN) pytest $(ARGS)

test-fast: sync
	$(RUN) pytest -m "not slow" $(ARGS)

# The product in containers: the image from services/Dockerfile playing the rendered manifests with
# podman (docs/kubernetes.md). e2e-setup installs podman, runc and debootstrap when missing (root).
e2e-setup:
	bash tests/containers/setup.sh

e2e: sync e2e-setup
	$(RUN) pytest -m e2e tests/containers $(ARGS)

lint: sync
	$(RUN) ruff check services infra policy tests bench

-include infra/k8s.mk
-include tools/engine.mk
