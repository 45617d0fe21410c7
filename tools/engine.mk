# The real Pulumi engine and a Kubernetes control plane, built from Go modules (docs/engine.md).
# Included by the Makefile.
#   make engine        build them once per machine into $(ENGINE_CACHE) (~30 min cold on 2 cores; then seconds)
#   make engine-test   build if needed, then run the engine tests (pytest -m engine tests/engine)
ENGINE_CACHE ?= $(or $(TFF_ENGINE_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tff-k8s/engine)

.PHONY: engine engine-test
engine:
	TFF_ENGINE_CACHE=$(ENGINE_CACHE) nice -n 19 bash tools/engine/build.sh

engine-test: sync engine
	TFF_ENGINE_CACHE=$(ENGINE_CACHE) $(RUN) pytest -m engine tests/engine $(ARGS)
