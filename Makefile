# The README's two commands: `make demo` runs a local federation, `make test` runs the tests.
# Both bootstrap uv from PyPI when it is absent and install exactly what uv.lock pins.
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo $(HOME)/.local/bin/uv)
RUN := $(UV) run --frozen --all-extras
ARGS ?=

.PHONY: demo test test-fast sync uv lint
uv:
	@command -v $(UV) >/dev/null 2>&1 || python3 -m pip install --user --quiet uv || python3 -m pip install --quiet uv

sync: uv
	$(UV) sync --frozen --all-extras

demo: sync
	$(RUN) tff-k8s local --output-dir out/demo $(ARGS)

test: sync
	$(RUN) pytest $(ARGS)

test-fast: sync
	$(RUN) pytest -m "not slow" $(ARGS)

lint: sync
	$(RUN) ruff check services infra tests

-include infra/k8s.mk
