# The README's two commands: `make demo` runs a local federation, `make test` runs the tests.
# Both bootstrap uv from PyPI when it is absent and install exactly what uv.lock pins.
SHELL := /bin/bash
# uv from PATH, else the copy `make uv` installs from PyPI into this Python (run as `python3 -m uv`).
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
RUN := $(UV) run --frozen
ARGS ?=

.PHONY: demo test test-fast sync uv lint
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

lint: sync
	$(RUN) ruff check services infra policy tests bench

-include infra/k8s.mk
-include tools/engine.mk
