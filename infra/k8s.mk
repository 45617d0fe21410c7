# Kubernetes targets, included by the Makefile. They need Docker, kind, kubectl and the Pulumi CLI on
# this machine (none of which the tests need). Walkthrough: docs/kubernetes.md.
#   make kind-up images kind-load up-dev     a local federation on kind
#   make logs-dev                            follow the server's training log
#   make down                                destroy the stack and delete the cluster
KIND ?= kind
DOCKER ?= docker
PULUMI ?= pulumi
KUBECTL ?= kubectl
KIND_CLUSTER ?= tff-k8s
# kind enforces NetworkPolicy from 0.24 (kindnetd + kube-network-policies), but before 0.28 a default-deny
# policy also blocked the kubelet's probes (kind#3875, kube-network-policies#150), so this stack's Pods
# never turned Ready. kind 0.28.0 ships kube-network-policies 0.8.0, the release that issue's probe
# regression test (kube-network-policies#160) was written against.
# The workflows pin a newer release (helm/kind-action `version:`); tests check both against this line.
KIND_MIN_VERSION := 0.28.0
IMAGE_TAG ?= dev
SERVER_IMAGE ?= tff-k8s-server:$(IMAGE_TAG)
CLIENT_IMAGE ?= tff-k8s-client:$(IMAGE_TAG)
DEV_STACK ?= dev

.PHONY: kind-check kind-up images kind-load stack-dev preview-dev up-dev logs-dev down

kind-check:
	@have=$$($(KIND) version | sed -n 's/^kind v\([0-9][0-9.]*\).*/\1/p'); \
	if [ -z "$$have" ] || [ "$$(printf '%s\n' '$(KIND_MIN_VERSION)' "$$have" | sort -V | head -n 1)" != '$(KIND_MIN_VERSION)' ]; then \
		echo "kind $${have:-(unknown version)} is older than $(KIND_MIN_VERSION): its NetworkPolicy enforcement blocks the kubelet's probes under this stack's default-deny policy; install kind >= $(KIND_MIN_VERSION) (docs/kubernetes.md)" >&2; \
		exit 1; \
	fi

kind-up: kind-check
	@$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' \
		|| $(KIND) create cluster --name $(KIND_CLUSTER) --config infra/kind-cluster.yaml --wait 180s
	$(KUBECTL) cluster-info --context kind-$(KIND_CLUSTER)

images:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f services/server/Dockerfile -t $(SERVER_IMAGE) .
	DOCKER_BUILDKIT=1 $(DOCKER) build -f services/client/Dockerfile -t $(CLIENT_IMAGE) .

kind-load:
	$(KIND) load docker-image --name $(KIND_CLUSTER) $(SERVER_IMAGE) $(CLIENT_IMAGE)

stack-dev: sync
	$(PULUMI) stack select --create $(DEV_STACK)

preview-dev: stack-dev
	$(PULUMI) preview --stack $(DEV_STACK) --diff

up-dev: stack-dev
	$(PULUMI) up --stack $(DEV_STACK) --yes

logs-dev:
	$$($(PULUMI) stack output logsCommand --stack $(DEV_STACK))

down:
	-$(PULUMI) destroy --stack $(DEV_STACK) --yes
	$(KIND) delete cluster --name $(KIND_CLUSTER)
