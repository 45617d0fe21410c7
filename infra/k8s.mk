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
# One image for both roles (services/Dockerfile), tagged by its content: `make images` tags it with the
# first 12 hex digits of the built image's ID, and up-dev hands that reference to the program
# (TFF_K8S_IMAGE_REF, dev stacks only), so a rebuilt image changes the Pod specs and rolls the Pods.
# A fixed tag would not: with imagePullPolicy IfNotPresent the nodes would keep running the old image.
# The image is also tagged $(IMAGE_REPO):dev, the stack file's own reference.
IMAGE_REPO ?= tff-k8s
IMAGE_ID_FILE ?= out/image.iid
IMAGE_REF = $(IMAGE_REPO):$(shell cut -c8-19 $(IMAGE_ID_FILE) 2>/dev/null)
need-image = @test -s $(IMAGE_ID_FILE) || { echo "no image built yet ($(IMAGE_ID_FILE) is missing): run make images" >&2; exit 1; }
# Nodes `kind-load` copies the image to: the workers, where the Pods run (the control plane of a
# multi-node kind cluster is tainted NoSchedule); empty: every worker of the cluster, or all nodes when
# it has none.
KIND_LOAD_NODES ?=
DEV_STACK ?= dev

.PHONY: kind-check kind-up images image-ref kind-load stack-dev preview-dev up-dev logs-dev down
.PHONY: kind-up-crosssilo kind-load-crosssilo

# Cross-silo on one machine (Pulumi.crosssilo.yaml, docs/kubernetes.md): a single-node cluster per party,
# the hub first, so that its node gets the kind network's first address (the stack's hub.public_address).
CROSSSILO_CLUSTERS ?= hub silo-a silo-b

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

# The tag is computed in the shell, not through $(IMAGE_REF): make expands a whole recipe before its
# first line runs, i.e. before the build has written the new image ID.
images:
	@mkdir -p $(dir $(IMAGE_ID_FILE))
	DOCKER_BUILDKIT=1 $(DOCKER) build -f services/Dockerfile --iidfile $(IMAGE_ID_FILE) -t $(IMAGE_REPO):dev .
	ref=$(IMAGE_REPO):$$(cut -c8-19 $(IMAGE_ID_FILE)) && $(DOCKER) tag "$$(cat $(IMAGE_ID_FILE))" "$$ref" && echo "built $$ref"

image-ref:
	$(need-image)
	@echo $(IMAGE_REF)

kind-up-crosssilo: kind-check
	@for c in $(CROSSSILO_CLUSTERS); do \
		$(KIND) get clusters 2>/dev/null | grep -qx "$$c" || $(KIND) create cluster --name "$$c" --wait 180s || exit 1; \
	done

kind-load-crosssilo: kind-check
	$(need-image)
	@for c in $(CROSSSILO_CLUSTERS); do $(KIND) load docker-image --name "$$c" $(IMAGE_REF) $(IMAGE_REPO):dev || exit 1; done

kind-load: kind-check
	$(need-image)
	nodes='$(KIND_LOAD_NODES)'; \
	[ -n "$$nodes" ] || nodes=$$($(KIND) get nodes --name $(KIND_CLUSTER) | grep -e '-worker[0-9]*$$' | paste -s -d , -); \
	$(KIND) load docker-image --name $(KIND_CLUSTER) $${nodes:+--nodes "$$nodes"} $(IMAGE_REF) $(IMAGE_REPO):dev

stack-dev: sync
	$(PULUMI) stack select --create $(DEV_STACK)

preview-dev: stack-dev
	$(if $(wildcard $(IMAGE_ID_FILE)),TFF_K8S_IMAGE_REF=$(IMAGE_REF)) $(PULUMI) preview --stack $(DEV_STACK) --diff

up-dev: stack-dev
	$(need-image)
	TFF_K8S_IMAGE_REF=$(IMAGE_REF) $(PULUMI) up --stack $(DEV_STACK) --yes

logs-dev:
	$$($(PULUMI) stack output logsCommand --stack $(DEV_STACK))

down:
	-$(PULUMI) destroy --stack $(DEV_STACK) --yes
	$(KIND) delete cluster --name $(KIND_CLUSTER)
