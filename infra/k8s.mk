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
IMAGE_TAG ?= dev
SERVER_IMAGE ?= tff-k8s-server:$(IMAGE_TAG)
CLIENT_IMAGE ?= tff-k8s-client:$(IMAGE_TAG)
DEV_STACK ?= dev

.PHONY: kind-up images kind-load stack-dev preview-dev up-dev logs-dev down

kind-up:
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
